"""ALPT: bit width from the budget, stochastic rounding, learnable step sizes, low-precision storage."""

from __future__ import annotations

import pytest
import torch

from embeddings.alpt import ALPTTable
from embeddings.quantization import QuantizedTable
from embeddings.table import BudgetError

FRAPPE_FIELDS = [957, 4082, 7, 7, 2, 3, 2, 9, 80, 233]


def test_bits_follow_the_budget() -> None:
    assert (ALPTTable(5382, 16, 1.0).bits, ALPTTable(5382, 16, 1.0).scale_dtype) == (16, "float32")
    half = ALPTTable(5382, 16, 0.5, field_dims=FRAPPE_FIELDS)
    assert (half.bits, half.scale_dtype) == (8, "float32")
    tenth = ALPTTable(5382, 16, 0.1, field_dims=FRAPPE_FIELDS)
    assert (tenth.bits, tenth.scale_dtype) == (2, "float16")
    with pytest.raises(BudgetError):
        ALPTTable(5382, 16, 0.05, field_dims=FRAPPE_FIELDS)


def test_stochastic_rounding_is_unbiased_and_clamped() -> None:
    table = ALPTTable(10, 4, 0.5, bits=8)
    torch.manual_seed(0)
    rounded = table._round(torch.full((200_000,), 2.3))
    assert set(rounded.unique().tolist()) == {2.0, 3.0}
    assert rounded.mean().item() == pytest.approx(2.3, abs=0.01)
    assert table._round(torch.tensor([1e6, -1e6])).tolist() == [127.0, -128.0]


def test_step_gradient_and_requantization_after_a_step() -> None:
    table = ALPTTable(8, 4, 0.5, bits=8)
    ids = torch.tensor([[1, 2]])
    out = table(ids)
    grad = torch.randn(out.shape)
    out.backward(grad)
    step = table.log_step.detach().exp()[ids]
    expected = (grad * step * table.codes[ids].float()).sum(-1, keepdim=True)  # d out / d log step
    assert torch.allclose(table.log_step.grad[ids], expected)
    assert torch.equal(table.delta.grad[ids], grad)
    with torch.no_grad():
        table.delta[1] += 0.05
    table.after_step(1, 10)
    assert not bool(table.delta.any())
    value = table.log_step.exp()[1] * table.codes[1].float()
    assert bool(((value - 0.05).abs() <= table.log_step.exp()[1] + 1e-6).all())  # within one grid step


def test_finalize_packs_codes_with_row_steps() -> None:
    table = ALPTTable(5382, 16, 0.1, field_dims=FRAPPE_FIELDS)
    serving = table.finalize()
    assert isinstance(serving, QuantizedTable) and serving.bits == 2
    assert serving.memory_bytes() == 5382 * 4 + 5382 * 2 + 80  # 2-bit codes, float16 steps, offsets
    ids = torch.tensor([[0, 957, 5039, 5046, 5053, 5055, 5058, 5060, 5069, 5149]])
    assert torch.allclose(serving(ids), table(ids), rtol=1e-3)


def test_training_reads_the_float16_steps_that_serve() -> None:
    """At budget 0.1 the steps are stored as float16: validation must see those, not float32 ones."""
    torch.manual_seed(0)
    table = ALPTTable(5382, 16, 0.1, field_dims=FRAPPE_FIELDS)
    with torch.no_grad():
        table.log_step.add_(torch.randn_like(table.log_step) * 0.3)
        table.codes.copy_(torch.randint(table.qmin, table.qmax + 1, table.codes.shape))
    ids = torch.tensor([[0, 957, 5039, 5046, 5053, 5055, 5058, 5060, 5069, 5149]])
    assert torch.equal(table.finalize()(ids), table(ids))


def test_entries_the_optimizer_did_not_move_keep_their_codes() -> None:
    """Re-rounding ``step * code / step`` in float32 used to flip about 1 code in 2,000 per 100 steps."""
    torch.manual_seed(0)
    table = ALPTTable(20000, 16, 0.5, bits=8, init_std=0.05)
    with torch.no_grad():
        table.log_step.uniform_(-8, -2)  # learned per-row steps
    codes = table.codes.clone()
    for step in range(1, 101):
        table.after_step(step, 100)
    assert torch.equal(table.codes, codes)
