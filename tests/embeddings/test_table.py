"""The embedding-table interface and the full-table baseline.

Checks the [B, F] -> [B, F, dim] contract, exact byte accounting, id validation naming "feature ids",
per-field offsets, the field-wise composition, and rebuilding a table (of any registered kind) from
its config.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from embeddings.full import FullTable
from embeddings.registry import COMPOSED, METHODS
from embeddings.table import TABLES, BudgetError, EmbeddingTable, FieldwiseTable, build_table, table_class
from sparsekit.errors import InputError

FIELDS = [3, 5, 2]


class HashedTable(EmbeddingTable):
    """A minimal compressed subclass (ids hashed into fewer rows), to exercise the interface."""

    kind = "test-hashed"

    def __init__(self, num_features, dim, budget=1.0, *, field_dims=None):
        super().__init__(num_features, dim, budget, field_dims=field_dims)
        self.rows = max(1, int(budget * num_features))
        self.weight = nn.Parameter(torch.randn(self.rows, dim))

    def lookup(self, ids):
        return self.weight[ids % self.rows]


def _ids() -> torch.Tensor:
    return torch.tensor([[0, 3, 8], [2, 7, 9], [1, 4, 8]])


def test_full_table_gathers_rows() -> None:
    table = FullTable(10, 4, field_dims=FIELDS)
    out = table(_ids())
    assert out.shape == (3, 3, 4)
    assert torch.equal(out, table.weight[_ids()])
    assert table.weight.std().item() < 1e-3  # N(0, 1e-4) init


def test_memory_bytes_counts_parameters_and_buffers() -> None:
    shared = FullTable(10, 4)
    assert shared.memory_bytes() == 10 * 4 * 4 == shared.full_bytes()
    fielded = FullTable(10, 4, field_dims=FIELDS)
    real = sum(t.numel() * t.element_size() for t in [*fielded.parameters(), *fielded.buffers()])
    assert fielded.memory_bytes() == real == 10 * 4 * 4 + 3 * 8  # + the int64 field offsets
    wise = FieldwiseTable(10, 4, field_dims=FIELDS)
    assert wise.memory_bytes() == 10 * 4 * 4 + 3 * 8  # sub-tables are shared-id tables: no offsets
    hashed = HashedTable(100, 4, budget=0.1)
    assert (
        hashed.memory_bytes() == 10 * 4 * 4
        and hashed.memory_bytes() / hashed.full_bytes() == pytest.approx(0.1)
    )


@pytest.mark.parametrize("bad", [-1, 10, 123])
def test_out_of_range_ids_name_feature_ids(bad: int) -> None:
    table = FullTable(10, 4)
    ids = _ids().clone()
    ids[1, 2] = bad
    with pytest.raises(InputError, match="out of range") as info:
        table(ids)
    assert info.value.source == "feature ids"


def test_ids_must_be_int64_matrix_with_the_field_count() -> None:
    table = FullTable(10, 4, field_dims=FIELDS)
    for ids in (_ids().float(), _ids()[0], _ids()[:, :2], _ids().to(torch.int32)):
        with pytest.raises(InputError) as info:
            table(ids)
        assert info.value.source == "feature ids"
    assert table(torch.zeros(0, 3, dtype=torch.int64)).shape == (0, 3, 4)


def test_constructor_checks() -> None:
    with pytest.raises(InputError, match="sum to 9") as info:
        FullTable(10, 4, field_dims=[3, 4, 2])
    assert info.value.source == "field_dims"
    with pytest.raises(InputError) as info:
        FullTable(10, 4, budget=0.5)
    assert info.value.source == "budget"
    with pytest.raises(InputError):
        FieldwiseTable(10, 4)


def test_field_of_uses_offsets() -> None:
    table = FullTable(10, 4, field_dims=FIELDS)
    assert table.field_of(torch.arange(10)).tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 2, 2]
    assert FullTable(10, 4).field_of(torch.arange(3)).tolist() == [0, 0, 0]


def test_fieldwise_table_dispatches_local_ids() -> None:
    table = FieldwiseTable(10, 4, field_dims=FIELDS, table="full")
    out = table(_ids())
    expected = torch.stack(
        [
            table.tables[0].weight[_ids()[:, 0]],
            table.tables[1].weight[_ids()[:, 1] - 3],
            table.tables[2].weight[_ids()[:, 2] - 8],
        ],
        dim=1,
    )
    assert torch.equal(out, expected)
    flat = table.lookup(_ids().flatten())  # any shape: fields from the offsets
    assert torch.equal(flat, expected.reshape(-1, 4))


def test_fieldwise_with_a_compressed_subtable() -> None:
    table = FieldwiseTable(20, 2, 0.5, field_dims=[8, 12], table=HashedTable)
    # 80 bytes of budget, 16 of field offsets: the sub-tables share the other 64 (0.4 of their full size)
    assert [t.budget for t in table.tables] == [0.4, 0.4] and [t.rows for t in table.tables] == [3, 4]
    assert table.memory_bytes() == 16 + (3 + 4) * 2 * 4 <= table.budget_bytes()
    assert table.finalize() is table
    assert table(torch.tensor([[0, 8], [7, 19]])).shape == (2, 2, 2)


def test_fieldwise_table_pays_its_field_offsets_from_the_budget() -> None:
    """The offsets are paid before the sub-tables are sized, so the whole stays within the budget; when
    the share left cannot hold a sub-table, that sub-table's BudgetError says so."""
    for kind in ("hashing", "qr", "pep", "dpq", "qr+int4"):
        served = FieldwiseTable(3000, 8, 0.1, field_dims=[1000, 1200, 800], table=kind).finalize()
        assert served.memory_bytes() <= 1.02 * served.budget_bytes(), kind
    with pytest.raises(BudgetError, match="hashing"):
        FieldwiseTable(200, 16, 0.01, field_dims=[100, 100], table="hashing")  # 128 bytes - 16: < 2 rows


@pytest.mark.parametrize(
    "make",
    [
        lambda: FullTable(10, 4, field_dims=FIELDS, init_std=0.1),
        lambda: FieldwiseTable(10, 4, field_dims=FIELDS),
        lambda: HashedTable(10, 4, 0.5),
    ],
)
def test_build_table_round_trips(make) -> None:
    table = make()
    assert TABLES[table.config()["kind"]] is type(table)
    again = build_table(table.config())
    again.load_state_dict(table.state_dict())
    assert again.config() == table.config()
    assert torch.equal(again(_ids()), table(_ids()))


def test_unknown_kind() -> None:
    with pytest.raises(InputError, match="unknown embedding table kind"):
        build_table({"kind": "nope", "num_features": 3, "dim": 2})


def test_fieldwise_table_forwards_training_hooks_and_finalizes_its_subtables() -> None:
    """A field-wise table of pruning / QAT sub-tables trains them through their hooks and serves their
    finalized forms within the budget; the served table rebuilds from its config."""
    fields = [50, 60, 40]
    table = FieldwiseTable(150, 8, 0.5, field_dims=fields, table="pep")
    assert not table.settled  # PEP sub-tables search first
    for step in range(1, 11):
        table.after_step(step, 10)
    assert table.settled
    served = table.finalize()
    assert [t.kind for t in served.tables] == ["csr-rows"] * 3
    served.check_budget()
    ids = torch.tensor([[0, 50, 110], [49, 109, 149]])
    assert torch.equal(served(ids), table(ids))
    again = build_table(served.config())
    again.load_state_dict(served.state_dict())
    assert torch.equal(again(ids), served(ids))
    quantized = FieldwiseTable(150, 8, 0.5, field_dims=fields, table="int8").finalize()
    assert [t.kind for t in quantized.tables] == ["quantized"] * 3
    quantized.check_budget()


def test_fieldwise_lookup_of_any_shape_with_parameterless_subtables() -> None:
    """Served INT8 sub-tables store only buffers; a flat lookup must not need a parameter's dtype."""
    table = FieldwiseTable(150, 8, 0.5, field_dims=[50, 60, 40], table="int8").finalize()
    ids = torch.tensor([[0, 50, 110], [49, 109, 149]])
    assert torch.equal(table.lookup(ids.flatten()), table(ids).reshape(-1, 8))


def test_fieldwise_lookup_of_ids_not_laid_out_by_field() -> None:
    """A [B, F]-shaped tensor whose columns are not the fields: each id still reads its own field."""
    torch.manual_seed(0)
    table = FieldwiseTable(10, 4, field_dims=FIELDS)
    ids = torch.tensor([[0, 1, 2], [8, 3, 9]])
    assert torch.equal(table.lookup(ids), table.lookup(ids.flatten()).reshape(2, 3, 4))


@pytest.mark.parametrize("kind", ["optembed", "adaptembed"])
def test_fieldwise_sub_tables_observe_their_training_lookups(kind: str) -> None:
    """OptEmbed counts row hits and AdaptEmbed scores rows by gradient norm as lookups run in training:
    wrapped field-wise, each sub-table must still see its own (local) ids."""
    fields = [50, 60, 40]
    table = FieldwiseTable(150, 8, 0.5, field_dims=fields, table=kind).train()
    ids = torch.tensor([[0, 50, 110], [49, 109, 149]])
    table(ids).square().sum().backward()
    seen = [t.hits if kind == "optembed" else t.importance for t in table.tables]
    for f, counts in enumerate(seen):
        local = (ids[:, f] - sum(fields[:f])).tolist()
        assert sorted(counts.nonzero().flatten().tolist()) == sorted(local), (f, counts.nonzero())


@pytest.mark.parametrize("ids", [[[0, 0, 8]], [[5, 3, 8]], [[0, 3, 7]]])
def test_fieldwise_table_refuses_an_id_in_another_fields_column(ids) -> None:
    """In range globally, but not in its column's field: would read a wrapped or missing sub-table row."""
    table = FieldwiseTable(10, 2, field_dims=FIELDS)
    with pytest.raises(InputError, match="outside field") as info:
        table(torch.tensor(ids))
    assert info.value.source == "feature ids"


@pytest.mark.parametrize("kind", [*METHODS, *COMPOSED])
def test_a_budget_below_the_field_offsets_says_so(kind: str) -> None:
    """47 features of dim 1 at budget 0.1 hold 18 bytes, less than the 4 int64 field offsets: the
    BudgetError says that, instead of 'fits in -4 rows' or 'the budget holds -14 bytes'."""
    with pytest.raises(BudgetError) as info:
        table_class(kind)(47, 1, 0.1, field_dims=[1, 1, 5, 40])
    assert not re.search(r"(^|\s)-\d", info.value.reason), info.value.reason  # no negative room
