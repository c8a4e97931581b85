"""Raw-id vocabularies of a collaborative-filtering model: the user and item ids of the interaction log
it was trained on (:mod:`recsys.data.interactions_table`), stored in the model artifact as ``ids.json``
so that serving takes and returns the ids the application knows (``"alice"``, ``"sku-1093"``) instead of
row numbers. Models trained on pre-indexed data (the LightGCN files) have none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sparsekit.artifacts import MANIFEST, ArtifactWriter
from sparsekit.errors import ArtifactError, NotFoundError

FILE = "ids.json"


@dataclass(frozen=True)
class IdVocab:
    """Raw user ids by model row and raw item ids by model column."""

    users: tuple[str, ...]
    items: tuple[str, ...]

    @classmethod
    def of(cls, data: object) -> IdVocab | None:
        """The vocabulary of a dataset with ``user_ids`` / ``item_ids`` (``None`` when it has none)."""
        users, items = getattr(data, "user_ids", None), getattr(data, "item_ids", None)
        return None if users is None or items is None else cls(tuple(users), tuple(items))

    def user_row(self, user: str) -> int:
        """The model row of a raw user id (stripped, as the log's ids were); :class:`NotFoundError` when
        the model never saw it."""
        index = self.__dict__.get("_rows")
        if index is None:
            index = {u: i for i, u in enumerate(self.users)}
            object.__setattr__(self, "_rows", index)
        user = user.strip()
        if user not in index:
            raise NotFoundError(f"user: {user!r} is not a user of this model")
        return index[user]

    def write(self, writer: ArtifactWriter) -> None:
        writer.path(FILE).write_text(json.dumps({"users": list(self.users), "items": list(self.items)}))

    @classmethod
    def read(cls, path: str | Path, shape: tuple[int, int]) -> IdVocab | None:
        """The vocabulary stored in artifact ``path`` (checked against the model's users x items)."""
        file = Path(path) / FILE
        listed = FILE in _manifest_files(Path(path))
        if not file.is_file() and not listed:
            return None
        if not listed:
            raise ArtifactError(path, f"{FILE} is not listed in the manifest (not written with this model)")
        try:
            data = json.loads(file.read_text())
            vocab = cls(tuple(map(str, data["users"])), tuple(map(str, data["items"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(path, f"unreadable {FILE}: {exc}") from exc
        if (len(vocab.users), len(vocab.items)) != tuple(shape):
            raise ArtifactError(path, f"{FILE} names {len(vocab.users)} users x {len(vocab.items)} items, "
                                      f"the model has {shape[0]} x {shape[1]}")
        return vocab


def _manifest_files(path: Path) -> dict:
    try:
        return json.loads((path / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(path, f"unreadable manifest: {exc}") from exc
