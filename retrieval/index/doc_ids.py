"""Document ids of a vector index on disk: a UTF-8 blob plus int64 offsets, memory-mapped, so no
per-id Python object stays in RAM (which matters at a million documents). Shared by the dense,
bi-granular and hybrid kinds (``doc_ids.bin``, ``doc_ids.off``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from sparsekit.errors import ArtifactError

IDS_BLOB, IDS_OFFSETS = "doc_ids.bin", "doc_ids.off"


class DocIdTable:
    """Document ids read from a memory-mapped blob: ``table[row]`` decodes one id on demand."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray) -> None:
        self._blob = blob
        self._offsets = offsets
        self._hashes: np.ndarray | None = None  # sorted hash(id) of every row, built on first row_of
        self._order: np.ndarray | None = None  # rows in that order

    @staticmethod
    def write(doc_ids: Sequence[str], folder: Path) -> None:
        """Write ``doc_ids.bin`` and ``doc_ids.off`` into ``folder``."""
        encoded = [d.encode("utf-8") for d in doc_ids]
        offsets = np.zeros(len(encoded) + 1, dtype="<i8")
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        (folder / IDS_BLOB).write_bytes(b"".join(encoded))
        offsets.tofile(folder / IDS_OFFSETS)

    @classmethod
    def open(cls, folder: Path, num_docs: int) -> DocIdTable:
        """Map the two files of ``folder``; raise :class:`ArtifactError` naming a bad file."""
        blob_path, off_path = folder / IDS_BLOB, folder / IDS_OFFSETS
        for path in (blob_path, off_path):
            if not path.is_file():
                raise ArtifactError(path, "document id file missing")
        if off_path.stat().st_size != 8 * (num_docs + 1):
            raise ArtifactError(off_path, f"expected {num_docs + 1} offsets, file holds "
                                          f"{off_path.stat().st_size // 8}")
        offsets = np.memmap(off_path, dtype="<i8", mode="r")
        size = blob_path.stat().st_size
        if offsets[0] != 0 or offsets[-1] != size or (num_docs and np.any(np.diff(offsets) < 0)):
            raise ArtifactError(off_path, f"offsets do not describe {blob_path.name} ({size} bytes)")
        blob = np.memmap(blob_path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        return cls(blob, offsets)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, row: int) -> str:
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        return bytes(self._blob[start:end]).decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    def row_of(self, doc_id: str) -> int | None:
        """Row of ``doc_id`` (the first, if repeated), or ``None``.

        The first call hashes every id once into two sorted int64 arrays (16 bytes per document,
        where a ``dict`` of ids would hold ~100); each lookup is a binary search, confirmed by
        decoding the candidate rows, so hash collisions cannot return a wrong row.
        """
        if self._hashes is None:
            hashes = np.fromiter((hash(d) for d in self), dtype=np.int64, count=len(self))
            self._order = np.argsort(hashes, kind="stable")
            self._hashes = hashes[self._order]
        key = hash(doc_id)
        start = int(np.searchsorted(self._hashes, key, side="left"))
        end = int(np.searchsorted(self._hashes, key, side="right"))
        return next((int(r) for r in self._order[start:end] if self[int(r)] == doc_id), None)


def hits_from_rows(ids: DocIdTable, scores: np.ndarray, rows: np.ndarray) -> list[tuple[str, float]]:
    """``(doc id, score)`` pairs of one result row, dropping faiss's ``-1`` padding."""
    return [(ids[int(r)], float(s)) for s, r in zip(scores, rows, strict=True) if r >= 0]
