"""LSQ tables: the bit-width / step plan under the budget, the learned-step gradient, 3-bit serving."""

from __future__ import annotations

import pytest
import torch

from embeddings.lsq import LSQTable
from embeddings.quantization import QuantizedTable, pack_codes
from embeddings.table import BudgetError
from sparsekit.errors import InputError

FRAPPE_FIELDS = [957, 4082, 7, 7, 2, 3, 2, 9, 80, 233]
N = sum(FRAPPE_FIELDS)


def test_plan_takes_the_widest_code_that_fits() -> None:
    half = LSQTable(N, 16, 0.5, field_dims=FRAPPE_FIELDS)
    tenth = LSQTable(N, 16, 0.1, field_dims=FRAPPE_FIELDS)
    assert (half.bits, half.granularity) == (16, "field_column")
    assert (tenth.bits, tenth.granularity) == (3, "field_column")
    assert LSQTable(N, 16, 0.5, field_dims=FRAPPE_FIELDS, bits=4).granularity == "row"  # 1/8 + 1/16
    assert tuple(LSQTable(N, 16, 0.1, field_dims=FRAPPE_FIELDS).log_step.shape) == (10, 16)
    assert tuple(LSQTable(N, 16, 0.5, bits=8).log_step.shape) == (N, 1)  # no fields: row steps
    with pytest.raises(BudgetError):
        LSQTable(N, 16, 0.01, field_dims=FRAPPE_FIELDS)  # under 2 bits per weight
    with pytest.raises(BudgetError):
        LSQTable(N, 16, 0.1)  # without fields only row steps, which do not fit with 2-bit codes


@pytest.mark.parametrize(
    ("options", "source"),
    [({"bits": 5}, "bits"), ({"granularity": "table"}, "granularity"), ({"init_range": 0.0}, "init_range")],
)
def test_bad_options_name_the_option(options: dict, source: str) -> None:
    with pytest.raises(InputError) as info:
        LSQTable(N, 16, 0.1, field_dims=FRAPPE_FIELDS, **options)
    assert info.value.source == source
    with pytest.raises(InputError) as info:
        LSQTable(N, 16, 0.5, granularity="field_column")  # no fields to share steps over
    assert info.value.source == "granularity"


def test_row_step_gradient_counts_each_rows_reads_in_the_batch() -> None:
    """A row read twice has twice the weights behind its step: its scale is 1/sqrt(2) of a row read once."""
    table = LSQTable(3, 2, 1.0, bits=3, granularity="row", init_range=2.0)
    with torch.no_grad():
        table.weight.copy_(torch.full((3, 2), 0.2))
    table.train()
    table.lookup(torch.tensor([0, 0, 1])).sum().backward()
    grad = table.log_step.grad.flatten()
    once = grad[1]  # row 1: read once; row 0 read twice (twice the terms, scale / sqrt(2)); row 2 unread
    assert torch.allclose(grad[0], 2 * once / 2**0.5) and grad[2] == 0 and once != 0


def test_forward_rounds_and_clips_to_the_learned_grid() -> None:
    table = LSQTable(4, 2, 1.0, bits=3, granularity="row", init_range=2.0)
    with torch.no_grad():
        table.weight.copy_(torch.tensor([[0.2, 0.3], [-0.7, 1.2], [5.0, -5.0], [0.0, -2.0]]))
    table.eval()
    out = table.lookup(torch.arange(4))
    assert torch.allclose(out, torch.tensor([[0.0, 0.5], [-0.5, 1.0], [1.5, -2.0], [0.0, -2.0]]))


def test_step_gradient_is_lsq_scaled() -> None:
    """d out / d step = round(w/s) - w/s inside the range, qmin or qmax when clipped, times the LSQ
    gradient scale 1 / sqrt(weights per step x qmax); the weight gradient passes inside the range only."""
    table = LSQTable(2, 2, 1.0, bits=3, granularity="row", init_range=2.0)
    with torch.no_grad():
        table.weight.copy_(torch.tensor([[0.2, 0.3], [5.0, -0.7]]))
    table.train()
    table.lookup(torch.arange(2)).sum().backward()
    scale = (4 / 2 * 3) ** -0.5  # 4 weights read, 2 steps -> 2 weights per step; qmax 3
    ratio = torch.tensor([[0.4, 0.6], [10.0, -1.4]])
    grid = torch.tensor([[0.0, 1.0], [3.0, -1.0]])  # rounded, row 1 col 0 clipped at qmax
    d_step = torch.where(ratio.abs() < 3, grid - ratio, grid).sum(1, keepdim=True) * scale
    assert torch.allclose(table.log_step.grad, d_step * 0.5, atol=1e-6)  # chain rule through exp(log)
    assert torch.equal(table.weight.grad, torch.tensor([[1.0, 1.0], [0.0, 1.0]]))


def test_finalize_stores_three_bit_codes_and_field_column_steps() -> None:
    torch.manual_seed(0)
    table = LSQTable(N, 16, 0.1, field_dims=FRAPPE_FIELDS)
    with torch.no_grad():
        table.weight.normal_(0, 0.3)
        table.log_step.add_(torch.randn_like(table.log_step) * 0.2)
    table.eval()
    ids = torch.randint(0, N, (64, 10))
    serving = table.finalize()
    assert isinstance(serving, QuantizedTable) and serving.bits == 3 and serving.granularity == "field_column"
    assert serving.codes.dtype == torch.uint8 and tuple(serving.codes.shape) == (N, 6)  # 16 x 3 bits
    assert serving.memory_bytes() == N * 6 + 10 * 16 * 4 + 8 * 10 <= serving.budget_bytes()
    assert torch.equal(serving(ids), table(ids))


def test_three_bit_stream_layout_is_little_endian() -> None:
    codes = torch.tensor([[-4, -3, -2, -1, 0, 1, 2, 3]])  # unsigned 0..7 -> 0b111110101100011010001000
    assert pack_codes(codes, 3).tolist() == [[0b10001000, 0b11000110, 0b11111010]]
