"""Feature-row gather: the Triton zero-copy kernel (interpreter on CPU, CUDA on GPU) equals index_select."""

from __future__ import annotations

import textwrap

import pytest
import torch

from kernels.feature_gather import gather_rows
from kernels.feature_gather_reference import gather_rows_reference
from sparsekit.errors import InputError

WIDTHS = (100, 3, 32, 257, 1)


def _table(num_nodes: int, dim: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((num_nodes, dim), generator=gen).to(dtype)


TRITON_SCRIPT = textwrap.dedent(
    """
    import json
    import torch
    import triton.language  # imported under TRITON_INTERPRET=1
    from kernels.feature_gather_triton import gather_rows_triton

    out = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for dim in (100, 3, 32, 257, 1):
            gen = torch.Generator().manual_seed(dim)
            table = torch.randn((61, dim), generator=gen).to(dtype)
            # the same rows behind a base pointer 5 elements past an allocation: unaligned table start
            padded = torch.zeros(61 * dim + 5, dtype=dtype)
            padded[5:] = table.reshape(-1)
            shifted = padded[5:].view(61, dim)
            cases = {
                "repeated": torch.tensor([7, 7, 0, 60, 7, 33, 0], dtype=torch.int64),
                "int32": torch.randint(0, 61, (150,), generator=gen, dtype=torch.int32),
                "empty": torch.zeros(0, dtype=torch.int64),
                "strided": torch.randperm(61, generator=gen)[:20][::2],  # a view: ids[i] is not at ptr + i
            }
            for name, ids in cases.items():
                for base_name, base in (("aligned", table), ("shifted", shifted)):
                    got = gather_rows_triton(base, ids)
                    want = torch.index_select(table, 0, ids.long())
                    out.append({"dtype": str(dtype), "dim": dim, "case": name, "base": base_name,
                                "device": str(got.device), "shape": list(got.shape),
                                "equal": bool(torch.equal(got, want)), "dtype_ok": got.dtype == dtype})
            buf = torch.full((4, dim), -1.0).to(dtype)
            ids = torch.tensor([60, 1, 1, 2])
            res = gather_rows_triton(table, ids, out=buf)
            out.append({"dtype": str(dtype), "dim": dim, "case": "out", "base": "aligned", "device": "cpu",
                        "shape": list(buf.shape), "equal": bool(torch.equal(buf, table[ids])) and res is buf,
                        "dtype_ok": True})
    print(json.dumps(out))
    """
)


def test_triton_kernel_matches_index_select_in_interpreter(run_interpreted) -> None:
    results = run_interpreted(TRITON_SCRIPT)
    assert len(results) == 3 * len(WIDTHS) * 9
    assert {r["dim"] for r in results} == set(WIDTHS)
    for r in results:
        assert r["device"] == "cpu", r
        assert r["equal"] and r["dtype_ok"], r
        expected_rows = {"repeated": 7, "int32": 150, "empty": 0, "strided": 10, "out": 4}[r["case"]]
        assert r["shape"] == [expected_rows, r["dim"]], r


@pytest.mark.parametrize(("element_size", "dim"), [(4, 100), (4, 3), (4, 257), (2, 100), (2, 3), (4, 5000)])
def test_launch_shape_reads_whole_aligned_segments(element_size: int, dim: int) -> None:
    pytest.importorskip("triton")
    from kernels.feature_gather_triton import SEGMENT_BYTES, TILE_ELEMENTS, launch_shape

    align, block, rows = launch_shape(dim, element_size)
    assert align * element_size == SEGMENT_BYTES  # 32 floats / 64 halfs
    assert block % align == 0 and block & (block - 1) == 0  # every chunk = whole aligned 128-byte segments
    assert block >= min(dim, 512)  # narrow rows fit in one chunk (before the misaligned head)
    assert rows * block == max(TILE_ELEMENTS, block)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("dim", WIDTHS)
def test_cpu_dispatch_equals_index_select(dtype: torch.dtype, dim: int) -> None:
    table = _table(40, dim, dtype, seed=dim)
    ids = torch.tensor([39, 0, 0, 17, 5], dtype=torch.int32)
    got = gather_rows(table, ids)
    assert got.device.type == "cpu" and got.dtype == dtype
    assert torch.equal(got, table[ids.long()])
    out = torch.empty((5, dim), dtype=dtype)
    assert gather_rows(table, ids, out=out) is out
    assert torch.equal(out, table[ids.long()])
    assert gather_rows(table, torch.zeros(0, dtype=torch.int64)).shape == (0, dim)


def test_reference_copies_to_the_requested_device() -> None:
    table = _table(10, 4, torch.float32)
    ids = torch.tensor([3, 1])
    assert torch.equal(gather_rows_reference(table, ids, device="cpu"), table[ids])


@pytest.mark.parametrize(
    ("table", "ids", "out", "source"),
    [
        (torch.zeros(5), torch.tensor([0]), None, "table"),  # 1-D table
        (torch.zeros(5, 4).t(), torch.tensor([0]), None, "table"),  # not contiguous
        (torch.zeros(5, 4), torch.tensor([0.0]), None, "ids"),  # float ids
        (torch.zeros(5, 4), torch.tensor([[0]]), None, "ids"),  # 2-D ids
        (torch.zeros(5, 4), torch.tensor([0, 1]), torch.zeros(3, 4), "out"),  # wrong out shape
        (torch.zeros(5, 4), torch.tensor([0, 1]), torch.zeros(2, 4).half(), "out"),  # wrong dtype
    ],
)
def test_bad_arguments_raise_input_error(table, ids, out, source: str) -> None:
    with pytest.raises(InputError) as info:
        gather_rows(table, ids, out=out)
    assert info.value.source == source


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_kernel_reads_pinned_host_table(dtype: torch.dtype) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("triton")
    from kernels.feature_gather_triton import gather_rows_triton

    for dim in (*WIDTHS, 1000):
        table = _table(5000, dim, dtype, seed=dim).pin_memory()
        shifted = torch.empty(5000 * dim + 3, dtype=dtype).pin_memory()[3:].view(5000, dim)
        shifted.copy_(table)  # unaligned base pointer
        for id_dtype in (torch.int64, torch.int32):
            ids = torch.randint(0, 5000, (4096,), dtype=id_dtype, device="cuda")
            ids[:3] = ids[0]  # repeated ids
            want = torch.index_select(table, 0, ids.long().cpu())
            for base in (table, shifted):
                got = gather_rows(base, ids)  # dispatcher: CUDA output + pinned table -> Triton
                assert got.is_cuda and got.dtype == dtype
                assert torch.equal(got.cpu(), want), (dim, id_dtype)
            direct = gather_rows_triton(table, ids)
            assert torch.equal(direct.cpu(), want)
        on_device = gather_rows(table.cuda(), ids)  # device-resident table through the same kernel
        assert torch.equal(on_device.cpu(), want)
        assert gather_rows(table, torch.zeros(0, dtype=torch.int64, device="cuda")).shape == (0, dim)


def test_readable_from_keeps_no_reference_to_the_table() -> None:
    """A feature table can be gigabytes of pinned memory: asking whether a kernel can read it must not
    keep it alive."""
    import gc
    import weakref

    from kernels.feature_gather import readable_from

    table = torch.zeros(8, 4)
    alive = weakref.ref(table)
    assert not readable_from(table, torch.device("cuda"))  # an unpinned host table: not readable there
    del table
    gc.collect()
    assert alive() is None
