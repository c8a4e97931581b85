"""OptEmbed: threshold row pruning (long-tailed STE), the nested-prefix supernet, and the joint choice of
kept rows and widths under the budget."""

from __future__ import annotations

import torch

from embeddings.optembed import LongTailStep, OptEmbedTable, allocate, row_levels


def test_long_tail_step_forward_and_gradient() -> None:
    x = torch.tensor([-2.0, -0.1, 0.1, 0.7, 2.0], requires_grad=True)
    out = LongTailStep.apply(x)
    assert out.tolist() == [0.0, 0.0, 1.0, 1.0, 0.0 + 1.0]
    out.sum().backward()
    assert torch.allclose(x.grad, torch.tensor([0.0, 1.6, 1.6, 0.4, 0.0]))


def _value(counts, values, plan) -> tuple[float, int]:
    total = sum(float(v[lv, w - 1]) for v, (lv, w) in zip(values, plan, strict=True) if w)
    cost = sum(c[lv] * w for c, (lv, w) in zip(counts, plan, strict=True) if w)
    return total, cost


def test_row_levels_and_allocation_under_a_capacity() -> None:
    assert row_levels(10) == [10, 5, 2, 1] and row_levels(0) == []
    # field 0: 4 rows whose weight sits in the first dim; field 1: 1 row spread over every dim
    counts = [[4, 2, 1], [1]]
    values = [
        torch.tensor([[8.0, 8.0, 8.0], [6.0, 6.0, 6.0], [5.0, 5.0, 5.0]]),
        torch.tensor([[2.0, 3.0, 4.0]]),
    ]
    assert allocate(counts, values, capacity=100) == [(0, 1), (0, 3)]  # no value stored for nothing
    configs = [[(0, 0)] + [(lv, w) for lv in range(len(c)) for w in (1, 2, 3)] for c in counts]
    for capacity in (1, 2, 4, 6):
        plan = allocate(counts, values, capacity)
        best = max(
            _value(counts, values, [a, b])[0]
            for a in configs[0] for b in configs[1]
            if _value(counts, values, [a, b])[1] <= capacity
        )
        assert _value(counts, values, plan) == (best, _value(counts, values, plan)[1])
        assert _value(counts, values, plan)[1] <= capacity
    assert allocate([[], [1]], [torch.zeros(0, 3), values[1]], capacity=3) == [(0, 0), (0, 3)]


def test_supernet_samples_prefixes_in_training_only() -> None:
    torch.manual_seed(0)
    table = OptEmbedTable(40, 8, 0.5, field_dims=[10, 30])
    ids = torch.randint(0, 10, (64, 1)).expand(64, 2) + torch.tensor([0, 10])
    out = table(ids)
    widths = (out != 0).sum(-1)
    assert widths.min() >= 1 and widths.max() == 8 and len(widths.unique()) > 4
    for i in range(8):  # a prefix: no nonzero after a zero
        assert not bool(((out[..., i] == 0) & (out[..., i:] != 0).any(-1)).any())
    table.eval()
    assert torch.equal(table(ids), table.weight[ids])  # thresholds 0: every row kept


def test_fix_prunes_rows_below_threshold_and_fits_the_budget() -> None:
    table = OptEmbedTable(40, 8, 0.3, field_dims=[10, 30])
    with torch.no_grad():
        table.weight.normal_()
        table.threshold.copy_(torch.tensor([0.0, 6.0]))
        table.hits.fill_(1.0)  # every row read equally often: rows rank by squared norm
    above = table.weight.abs().sum(1) > table.threshold[table._all_fields()]
    energy = table.weight.pow(2).sum(1)
    table.after_step(10, 10)
    assert table.fixed and table.penalty() is None
    assert not bool(table.row_keep[~above].any())  # below the threshold: pruned
    kept = [int(table.row_keep[:10].sum()), int(table.row_keep[10:].sum())]
    assert kept[0] > 0 and kept[0] * int(table.widths[0]) + kept[1] * int(table.widths[1]) <= table.max_nnz
    for field in (slice(0, 10), slice(10, 40)):  # a kept row is never weaker than a dropped candidate
        keep, candidate = table.row_keep[field], above[field]
        if keep.any() and (candidate & ~keep).any():
            assert energy[field][keep].min() >= energy[field][candidate & ~keep].max()
    ids = torch.arange(40).reshape(20, 2)
    serving = table.finalize()
    assert torch.equal(serving.lookup(ids), table.lookup(ids))
    assert serving.nnz == sum(k * int(w) for k, w in zip(kept, table.widths, strict=True))
