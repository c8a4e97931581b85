"""Node-feature store for sampled GCN training with GPU zero-copy gathering (PyTorch-Direct, VLDB 2021).

A PyG :class:`~torch_geometric.data.FeatureStore` whose tables live in host memory and whose
:meth:`NodeFeatureStore.gather` returns the sampled rows on the compute device, in one of three modes:

- ``"zero-copy"``: the table is pinned (``pin_memory()``) and, on CUDA, the Triton kernel of
  :mod:`kernels.feature_gather` reads the rows straight from host memory with 128-byte-aligned
  transactions (Min et al., "Large Graph Convolutional Network Training with GPU-Oriented Data
  Communication Architecture", VLDB 2021): no CPU gather, no staging copy.
- ``"cpu-copy"``: the baseline: ``index_select`` on the host table into a pinned staging buffer, then
  ``.to(device, non_blocking=True)``.
- ``"device"``: the upper bound: the whole table is copied to the GPU once and gathered there.

On a CPU-only machine all three modes gather with ``index_select`` on the host table and return CPU
tensors (no memory is pinned: pinning needs CUDA). A table larger than RAM can be a read-only
``np.memmap`` (:meth:`NodeFeatureStore.from_memmap`, or a ``.npy`` path), wrapped without copying.
Zero-copy needs page-locked memory, and pinning a memmap would lock the whole file into RAM, which
defeats the memmap; so on CUDA a memmap table asked for ``"zero-copy"`` runs ``"cpu-copy"`` instead
(with a warning; ``.mode`` reports the mode in effect).

:meth:`NodeFeatureStore.gather_async` runs the gather on a side CUDA stream so it overlaps the previous
batch's compute; its handle's ``wait()`` makes the current stream wait on a recorded event. Node ids are
validated with one min/max reduction: out-of-range ids or non-integer dtypes raise
:class:`~sparsekit.errors.InputError` naming ``"node ids"``.

With PyG's ``NodeLoader(data=(feature_store, graph_store), ...)`` every indexed ``get_tensor`` goes
through :meth:`gather`; keep ``num_workers=0`` on CUDA (the gather launches CUDA work).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import FeatureStore, TensorAttr

from kernels.feature_gather import gather_rows
from sparsekit.device import resolve_device
from sparsekit.errors import InputError, NotFoundError

MODES = ("zero-copy", "cpu-copy", "device")
NODE_IDS = "node ids"
INTEGER_DTYPES = frozenset({torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8})
WIDE_UNSIGNED = frozenset({torch.uint16, torch.uint32, torch.uint64})
Key = tuple[str | None, str | None]


@dataclass
class GatherHandle:
    """A gather in flight: :meth:`wait` returns the rows once the current stream may use them."""

    rows: torch.Tensor
    event: torch.cuda.Event | None = None

    def wait(self) -> torch.Tensor:
        if self.event is not None:
            stream = torch.cuda.current_stream(self.rows.device)
            stream.wait_event(self.event)
            self.rows.record_stream(stream)  # allocated on the side stream, used on this one
            self.event = None
        return self.rows


@dataclass
class _Table:
    """One feature table: ``data`` is what gathers read (host, pinned host or device), in ``mode``."""

    data: torch.Tensor
    mode: str
    memmap: bool
    readonly: bool  # wraps a memmap or a non-writeable numpy array: ``put_tensor`` must not write rows
    vector: bool  # a 1-D table (e.g. labels), stored as one column; gathers return 1-D rows
    staging: torch.Tensor | None = None  # cpu-copy on CUDA: pinned rows buffer, reused across gathers
    staged: torch.cuda.Event | None = None  # recorded after the last copy out of ``staging``

    def shaped(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows as the caller put them in: 1-D for a vector table."""
        return rows.view(-1) if self.vector else rows

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.shaped(self.data).shape)


def _from_numpy(array: np.ndarray, source: str) -> torch.Tensor:
    """Wrap without copying; read-only arrays (memmaps, non-writeable arrays) are never written through
    (see ``_put_tensor``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(array)
    except TypeError as err:
        raise InputError(source, f"unsupported dtype {array.dtype}") from err


def _as_tensor(table: torch.Tensor | np.ndarray, source: str) -> tuple[torch.Tensor, bool, bool]:
    """The table as a 1-D or 2-D contiguous tensor (numpy arrays and memmaps wrapped without copying),
    whether it is a memmap, and whether it is read-only (a memmap or a non-writeable array)."""
    memmap = isinstance(table, np.memmap)
    readonly = memmap or (isinstance(table, np.ndarray) and not table.flags.writeable)
    if isinstance(table, np.ndarray):
        if not table.flags.c_contiguous:
            raise InputError(source, "must be a C-contiguous array")
        table = _from_numpy(table, source)
    if not isinstance(table, torch.Tensor):
        raise InputError(source, f"must be a tensor, numpy array or .npy path, got {type(table).__name__}")
    if table.dim() not in (1, 2):
        raise InputError(source, f"must be (num_nodes, dim) or (num_nodes,), got shape {tuple(table.shape)}")
    if table.dtype == torch.bool or table.is_complex():
        raise InputError(source, f"must hold real numbers, got {table.dtype}")
    return table.contiguous(), memmap, readonly


def _load_npy(path: str | Path) -> np.ndarray:
    if not Path(path).is_file():
        raise InputError(path, "no such feature file")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise InputError(path, f"not a .npy array: {err}") from err


def _signed(array: np.ndarray, num_nodes: int) -> np.ndarray:
    """Empty or wide unsigned (uint16/32/64) ids as int64, checked first so a huge uint64 can't wrap."""
    if array.size == 0:
        return array.astype(np.int64)
    if array.dtype.kind == "u" and array.dtype.itemsize > 1:
        if int(array.max()) >= num_nodes:
            bad = int(array.max())
            raise InputError(NODE_IDS, f"node id {bad} out of range for a table of {num_nodes} rows")
        return array.astype(np.int64)
    return array


def _node_ids(ids: torch.Tensor | np.ndarray | list[int], num_nodes: int) -> torch.Tensor:
    """1-D integer ids, checked against ``[0, num_nodes)`` with one min/max reduction."""
    if isinstance(ids, torch.Tensor) and ids.dtype in WIDE_UNSIGNED:  # torch has no min/max for these
        ids = ids.cpu().numpy()
    if not isinstance(ids, torch.Tensor):
        ids = _from_numpy(_signed(np.asarray(ids), num_nodes), NODE_IDS)
    if ids.dtype not in INTEGER_DTYPES:
        raise InputError(NODE_IDS, f"must be integers, got dtype {ids.dtype}")
    if ids.dim() != 1:
        raise InputError(NODE_IDS, f"must be 1-D, got shape {tuple(ids.shape)}")
    if ids.dtype not in (torch.int32, torch.int64):
        ids = ids.long()
    if ids.numel():
        lo, hi = (int(v) for v in torch.aminmax(ids))
        bad = lo if lo < 0 else hi if hi >= num_nodes else None
        if bad is not None:
            raise InputError(NODE_IDS, f"node id {bad} out of range for a table of {num_nodes} rows")
    return ids


class NodeFeatureStore(FeatureStore):
    """Node features gathered onto the compute device in ``"zero-copy"``, ``"cpu-copy"`` or ``"device"`` mode.

    ``table``: a ``(num_nodes, dim)`` tensor or numpy array, or the path of a ``.npy`` file (memory-mapped,
    read-only); a 1-D table (labels) gathers 1-D rows. It is registered under ``(group_name, attr_name)``
    (PyG's homogeneous default: ``(None, "x")``); :meth:`gather` and the properties refer to that table,
    and ``put_tensor`` can add more. ``device`` defaults to :func:`sparsekit.device.default_device`.
    """

    def __init__(
        self,
        table: torch.Tensor | np.ndarray | str | Path,
        mode: str = "zero-copy",
        device: str | torch.device | None = None,
        group_name: str | None = None,
        attr_name: str = "x",
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise InputError("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
        self.requested_mode = mode
        self.device = torch.device(resolve_device(device))
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._tables: dict[Key, _Table] = {}
        self._key: Key = (group_name, attr_name)
        self._stream: torch.cuda.Stream | None = None
        if isinstance(table, str | Path):
            table = _load_npy(table)
        self._tables[self._key] = self._place(table, "table")

    @classmethod
    def from_memmap(
        cls,
        path: str | Path,
        shape: tuple[int, int],
        dtype: str = "float32",
        mode: str = "zero-copy",
        device: str | torch.device | None = None,
    ) -> NodeFeatureStore:
        """A store over a raw row-major feature file, opened read-only as an ``np.memmap`` (no copy)."""
        if not Path(path).is_file():
            raise InputError(path, "no such feature file")
        expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if Path(path).stat().st_size != expected:
            raise InputError(path, f"holds {Path(path).stat().st_size} bytes, shape {tuple(shape)} of "
                                   f"{dtype} needs {expected}")
        return cls(np.memmap(path, dtype=dtype, mode="r", shape=tuple(shape)), mode=mode, device=device)

    # Placement ###########################################################################################

    def _place(self, table: torch.Tensor | np.ndarray, source: str) -> _Table:
        host, memmap, readonly = _as_tensor(table, source)
        vector = host.dim() == 1
        host = host.view(-1, 1) if vector else host
        mode = self.requested_mode
        if self.device.type == "cuda" and mode == "zero-copy" and memmap:
            warnings.warn("zero-copy needs pinned memory; a memmap table uses cpu-copy", stacklevel=3)
            mode = "cpu-copy"
        if self.device.type == "cuda" and mode == "device":
            host = host.to(self.device)
        elif self.device.type == "cuda" and mode == "zero-copy" and not host.is_pinned():
            host = host.pin_memory()
        return _Table(host, mode, memmap, readonly, vector)

    def _table(self, key: Key) -> _Table:
        if key not in self._tables:
            raise NotFoundError(f"no feature table for group {key[0]!r}, attribute {key[1]!r}")
        return self._tables[key]

    # Properties of the main table #######################################################################

    @property
    def mode(self) -> str:
        """The mode in effect for the main table (a memmap on CUDA runs "cpu-copy")."""
        return self._table(self._key).mode

    @property
    def num_nodes(self) -> int:
        return int(self._table(self._key).data.shape[0])

    @property
    def dim(self) -> int:
        return int(self._table(self._key).data.shape[1])

    @property
    def table(self) -> torch.Tensor:
        """The main table as stored (host, pinned host or device tensor); gathers read it."""
        table = self._table(self._key)
        return table.shaped(table.data)

    # Gathering ##########################################################################################

    def gather(self, ids: torch.Tensor | np.ndarray | list[int]) -> torch.Tensor:
        """Rows ``ids`` of the main table on :attr:`device` (synchronous on the current stream)."""
        table = self._table(self._key)
        return table.shaped(self._gather(table, ids))

    def gather_host(self, ids: torch.Tensor | np.ndarray | list[int]) -> torch.Tensor:
        """Rows ``ids`` gathered on the host, not yet copied: the first half of "cpu-copy", exposed so a
        trainer can time the gather and the host-to-device copy apart. Needs a host-resident table."""
        table = self._table(self._key)
        if table.data.device.type != "cpu":
            raise InputError("mode", f"gather_host needs a host table; this one lives on {table.data.device}")
        ids = _node_ids(ids, int(table.data.shape[0]))
        return table.shaped(torch.index_select(table.data, 0, ids.cpu()))

    def gather_async(self, ids: torch.Tensor | np.ndarray | list[int]) -> GatherHandle:
        """Start gathering rows ``ids`` on a side CUDA stream; ``.wait()`` returns them (CPU: synchronous)."""
        table = self._table(self._key)
        if self.device.type != "cuda":
            return GatherHandle(table.shaped(self._gather(table, ids)))
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        self._stream.wait_stream(torch.cuda.current_stream(self.device))  # ids may come from that stream
        if isinstance(ids, torch.Tensor) and ids.is_cuda:
            ids.record_stream(self._stream)  # read there: not reused if the caller frees it before wait()
        with torch.cuda.stream(self._stream):
            rows = table.shaped(self._gather(table, ids))
            event = torch.cuda.Event()
            event.record(self._stream)
        return GatherHandle(rows, event)

    def _gather(self, table: _Table, ids: torch.Tensor | np.ndarray | list[int]) -> torch.Tensor:
        ids = _node_ids(ids, int(table.data.shape[0]))
        if self.device.type != "cuda":
            return torch.index_select(table.data, 0, ids.to(table.data.device))
        if table.mode == "zero-copy":
            return gather_rows(table.data, ids, device=self.device)
        if table.mode == "device":
            return torch.index_select(table.data, 0, ids.to(self.device, non_blocking=True))
        return self._gather_staged(table, ids)

    def _gather_staged(self, table: _Table, ids: torch.Tensor) -> torch.Tensor:
        """cpu-copy: ``index_select`` into a pinned staging buffer, then a non-blocking copy to the device."""
        n = ids.shape[0]
        if table.staged is not None:
            table.staged.synchronize()  # the previous copy out of the buffer has finished
        if table.staging is None or table.staging.shape[0] < n:
            capacity = max(n, 2 * (0 if table.staging is None else table.staging.shape[0]))
            table.staging = torch.empty((capacity, table.data.shape[1]), dtype=table.data.dtype,
                                        pin_memory=True)
        staging = table.staging[:n]
        torch.index_select(table.data, 0, ids.cpu(), out=staging)
        rows = staging.to(self.device, non_blocking=True)
        table.staged = torch.cuda.Event()
        table.staged.record()
        return rows

    # PyG FeatureStore interface #########################################################################

    @staticmethod
    def _key_of(attr: TensorAttr) -> Key:
        return (attr.group_name, attr.attr_name)

    def _put_tensor(self, tensor: torch.Tensor | np.ndarray, attr: TensorAttr) -> bool:
        """Index ``None``: register (or replace) a table; otherwise overwrite rows ``attr.index`` of one."""
        key = self._key_of(attr)
        if attr.index is None:
            self._tables[key] = self._place(tensor, str(attr.attr_name))
            return True
        table = self._table(key)
        if table.readonly:
            kind = "memmap" if table.memmap else "array"
            raise InputError(str(attr.attr_name), f"is a read-only {kind} table; its rows cannot be written")
        ids = self._index_ids(attr.index, table)
        rows = torch.as_tensor(tensor).to(table.data.device, table.data.dtype)
        want = (ids.shape[0], *table.shape[1:])
        if tuple(rows.shape) != want:
            raise InputError(str(attr.attr_name), f"expected rows of shape {want}, got {tuple(rows.shape)}")
        table.data[ids.to(table.data.device)] = rows.view(-1, table.data.shape[1])
        return True

    def _get_tensor(self, attr: TensorAttr) -> torch.Tensor:
        """Index ``None``: the table as stored; otherwise the indexed rows via :meth:`gather`."""
        table = self._table(self._key_of(attr))
        if attr.index is None:
            return table.shaped(table.data)
        rows = table.shaped(self._gather(table, self._index_ids(attr.index, table)))
        return rows[0] if isinstance(attr.index, int) else rows

    @staticmethod
    def _index_ids(index: torch.Tensor | np.ndarray | slice | int, table: _Table) -> torch.Tensor:
        if isinstance(index, slice):
            return torch.arange(*index.indices(int(table.data.shape[0])))
        if isinstance(index, int):
            index = [index]
        return _node_ids(index, int(table.data.shape[0]))

    def _remove_tensor(self, attr: TensorAttr) -> bool:
        return self._tables.pop(self._key_of(attr), None) is not None

    def _get_tensor_size(self, attr: TensorAttr) -> tuple[int, ...] | None:
        table = self._tables.get(self._key_of(attr))
        if table is None:
            return None
        if attr.index is None:
            return table.shape
        return (int(self._index_ids(attr.index, table).shape[0]), *table.shape[1:])

    def get_all_tensor_attrs(self) -> list[TensorAttr]:
        return [TensorAttr(group, attr) for group, attr in self._tables]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_nodes={self.num_nodes}, dim={self.dim}, mode={self.mode!r}, "
                f"device={str(self.device)!r})")
