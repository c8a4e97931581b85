"""``lookup_rows`` equals ``weight[ids]`` in value and gradient, on CPU and (through F.embedding) on CUDA.

On CPU ``lookup_rows`` is indexing, so that case pins only the shape and API; the CUDA case is the check.
"""

from __future__ import annotations

import pytest
import torch

from kernels.row_lookup import lookup_rows


def _case(device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(50, 6, generator=gen, dtype=torch.float64)
    ids = torch.randint(0, 50, (64, 3), generator=gen)
    ids[:, 0] = 7  # a hot row: many contributions to one gradient row
    grad = torch.randn(64, 3, 6, generator=gen, dtype=torch.float64)
    return weight.to(device).requires_grad_(), ids.to(device), grad.to(device)


def _value_and_grad(rows: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
    rows.backward(grad)
    return rows.detach().cpu(), weight.grad.cpu()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_matches_indexing_in_value_and_gradient(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    weight, ids, grad = _case(device)
    got = _value_and_grad(lookup_rows(weight, ids.cpu()), weight, grad)  # host ids work with any weight
    reference, ref_ids, ref_grad = _case("cpu")
    want = _value_and_grad(reference[ref_ids], reference, ref_grad)
    assert got[0].shape == (64, 3, 6)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=1e-12)
    assert got[1][7].abs().sum() > 0  # the hot row did receive gradient
