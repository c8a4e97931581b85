"""Compositions of a shared-row table with low-bit rows (embeddings.quantized_rows): more rows for the same
bytes, codes on the grid, the gather-only lookup equal to the inner table's lookup over dequantized rows,
and clear errors. (The table contract itself runs in test_inter_tables.)"""

from __future__ import annotations

import pytest
import torch

from embeddings.hashing import HashingTable
from embeddings.qr import QRTable
from embeddings.quantization import unpack_codes
from embeddings.quantized_rows import HashingInt8Table, QRInt4Table, QRInt8Table, QuantizedRowsTable
from embeddings.table import BudgetError, table_class
from kernels.embedding_bag_reference import compositional_bag_reference, hashed_bag_reference
from sparsekit.errors import InputError

N, DIM = 5382, 16


@pytest.mark.parametrize(("kind", "float_kind", "at_least"), [
    ("qr+int8", QRTable, 3.4), ("qr+int4", QRTable, 6.0), ("hashing+int8", HashingTable, 3.4),
    ("hashing+int4", HashingTable, 6.0)])
def test_the_same_bytes_hold_more_rows(kind: str, float_kind: type, at_least: float) -> None:
    quantized = table_class(kind)(N, DIM, 0.01).finalize()
    plain = float_kind(N, DIM, 0.01)
    assert quantized.codes.shape[0] >= at_least * plain.weight.shape[0]
    assert quantized.memory_bytes() <= 1.02 * quantized.budget_bytes()


@pytest.mark.parametrize("kind", ["qr+int8", "qr+int4", "hashing+int8", "hashing+int4"])
def test_serving_gathers_only_what_the_inner_lookup_would_read(kind: str) -> None:
    torch.manual_seed(0)
    table = table_class(kind)(N, DIM, 0.01)
    with torch.no_grad():
        table.weight.normal_()
    served = table.finalize()
    rows = unpack_codes(served.codes, served.bits, DIM)
    assert rows.abs().max() <= served.qmax
    dense = rows.float() * served.scales.float()[:, None]  # every row, dequantized
    ids = torch.randint(0, N, (64, 10))
    if served.table_kind == "hashing":
        want = hashed_bag_reference(dense, ids, served.inner.hash)
    else:
        want = compositional_bag_reference(dense, ids, served.inner.spec)
    torch.testing.assert_close(served(ids), want, rtol=0, atol=0)


def test_training_rows_sit_on_the_quantization_grid() -> None:
    torch.manual_seed(1)
    table = QRInt4Table(N, DIM, 0.01)
    with torch.no_grad():
        table.weight.normal_()
    out = table.lookup(torch.arange(0, N, 7))
    served = table.finalize()
    assert torch.equal(served.lookup(torch.arange(0, N, 7)), out.detach())
    assert served.codes.dtype == torch.uint8 and served.scales.dtype == torch.float16  # two codes a byte


def test_bad_options_and_budgets_are_named() -> None:
    with pytest.raises(InputError, match="table"):
        QuantizedRowsTable(N, DIM, 0.1, table="tt_rec")
    with pytest.raises(InputError, match="bits"):
        QRInt8Table(N, DIM, 0.1, bits=2)
    with pytest.raises(BudgetError) as info:
        QRInt8Table(N, DIM, 0.001)
    assert info.value.source == "qr+int8"


def test_small_rows_keep_the_code_range_and_huge_rows_saturate() -> None:
    table = HashingInt8Table(N, DIM, 0.1)  # rows start at N(0, 1e-4), below float16's normal range
    rows = table.weight.detach()
    served = table.finalize()
    dequantized = unpack_codes(served.codes, 8, DIM).float() * served.scales.float()[:, None]
    assert (dequantized - rows).norm() / rows.norm() < 0.02
    with torch.no_grad():
        table.weight[0, 0] = 1e7  # beyond float16: the scale saturates, nothing turns NaN
    assert torch.isfinite(table.finalize().lookup(torch.arange(N))).all()
