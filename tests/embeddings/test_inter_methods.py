"""What each inter-feature method computes and how it sizes itself: hashing, QR, TT-Rec, DHE, ROBE, DPQ,
MGQE and dedup, checked against direct re-computations on small shapes."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from embeddings.dedup import DedupTable, merge_close_rows, plan_unique_rows, weighted_kmeans
from embeddings.dhe import DHETable, mlp_floats
from embeddings.dpq import CodebookTable, DPQTable, pack_codes, packed_bytes, plan_codes, unpack_codes
from embeddings.hashing import HashingTable, hash_coefficients
from embeddings.mgqe import MGQETable, TieredCodebookTable
from embeddings.qr import QRTable, plan_radices
from embeddings.robe import ROBETable
from embeddings.table import BudgetError
from embeddings.tt_rec import TTRecTable, column_modes, core_floats, row_modes
from kernels.embedding_bag_reference import universal_hash
from sparsekit.errors import InputError

# --- hashing ---------------------------------------------------------------------------------------


def test_hashing_rows_fill_the_budget_and_colliding_features_share_a_row() -> None:
    table = HashingTable(1000, 8, 0.05)  # 1,600 bytes -> 50 rows of 32 bytes
    assert table.num_rows == 50 and table.memory_bytes() == 1600
    ids = torch.arange(1000)
    rows = universal_hash(ids, table.hash.a, table.hash.b, 50)
    out = table.lookup(ids)
    assert torch.equal(out, table.weight[rows])
    first, second = torch.nonzero(rows == rows[0]).reshape(-1)[:2].tolist()
    assert torch.equal(out[first], out[second])


def test_hash_coefficients_depend_on_the_seed_only() -> None:
    assert hash_coefficients(3, 4) == hash_coefficients(3, 4)
    assert hash_coefficients(3, 4) != hash_coefficients(4, 4)
    assert all(1 <= a < 2**31 - 1 and 0 <= b < 2**31 - 1 for a, b in hash_coefficients(0, 50))


def test_hashing_budget_error_below_one_row() -> None:
    with pytest.raises(BudgetError) as info:
        HashingTable(100, 16, 0.001)  # 6 bytes < one 64-byte row
    assert info.value.source == "hashing"


# --- QR / compositional ----------------------------------------------------------------------------


def test_qr_takes_the_largest_remainder_table_that_fits() -> None:
    assert plan_radices(5382, 2689) == (2686, 3)  # 2 rows of quotient table would need 2,691 + 2
    assert plan_radices(100, 1000) == (100, 2)  # capped at one row per feature
    radices = plan_radices(5382, 52)  # two tables need >= 2 sqrt(5382) ~ 147 rows
    assert len(radices) > 2 and sum(radices) <= 52 and math.prod(radices) >= 5382
    with pytest.raises(BudgetError):
        plan_radices(5382, 4)
    forced = plan_radices(1000, 500, partitions=3)
    assert len(forced) == 3 and math.prod(forced) >= 1000


@pytest.mark.parametrize("combine", ["mult", "add"])
def test_qr_vectors_combine_quotient_and_remainder_rows(combine: str) -> None:
    table = QRTable(500, 4, 0.2, combine=combine)  # 400 bytes -> 100 rows... minus nothing: (95, 6)
    m, q = table.radices
    assert m * q >= 500 and m + q <= 100
    x = torch.tensor([0, 7, 499, m, m + 1])
    rem, quo = table.weight[x % m], table.weight[m + x // m]
    want = rem * quo if combine == "mult" else rem + quo
    assert torch.equal(table.lookup(x), want)


def test_qr_mult_starts_as_a_hashed_table() -> None:
    table = QRTable(500, 4, 0.2)
    assert (table.weight[table.radices[0]:] - 1).abs().max() < 1e-3  # quotient rows ~ 1
    assert table.weight[: table.radices[0]].abs().max() < 1e-3  # remainder rows ~ N(0, 1e-4)


def test_qr_rejects_bad_options() -> None:
    with pytest.raises(InputError) as info:
        QRTable(100, 4, 0.5, combine="concat")
    assert info.value.source == "combine"
    with pytest.raises(InputError):
        QRTable(100, 4, 0.5, partitions=1)


# --- TT-Rec ----------------------------------------------------------------------------------------


def test_tt_modes() -> None:
    assert row_modes(5382, 3) == (18, 18, 17)
    assert math.prod(row_modes(1000, 3)) >= 1000 and max(row_modes(1000, 3)) == 10
    assert column_modes(16, 3) == (2, 2, 4)
    assert column_modes(7, 3) == (1, 1, 7) and math.prod(column_modes(24, 4)) == 24


def _dense_tt(table: TTRecTable) -> torch.Tensor:
    full = table.factors[0][0]  # [n1, d1, r1]
    for core in table.factors[1:]:
        full = torch.einsum("axr,rbys->abxys", full, core)  # [rows so far, n_j, d so far, d_j, r_j]
        full = full.reshape(full.shape[0] * full.shape[1], -1, core.shape[-1])
    return full.reshape(-1, table.dim)


def test_tt_rows_are_the_rows_of_the_reconstructed_table() -> None:
    table = TTRecTable(300, 8, 0.5)
    dense = _dense_tt(table)
    assert dense.shape[0] == math.prod(table.rows) >= 300
    ids = torch.tensor([[0, 1, 299], [150, 7, 7]])
    torch.testing.assert_close(table(ids), dense[ids])


def test_tt_rank_is_the_largest_that_fits() -> None:
    table = TTRecTable(5382, 16, 0.1)
    floats = table.budget_bytes() // 4
    assert core_floats(table.rows, table.cols, table.rank) <= floats
    assert core_floats(table.rows, table.cols, table.rank + 1) > floats
    assert table.memory_bytes() == 4 * core_floats(table.rows, table.cols, table.rank)
    assert 0.3e-2 < table.lookup(torch.arange(5382)).std() < 3e-2  # init std targets init_std


def test_tt_fixed_rank_over_budget() -> None:
    with pytest.raises(BudgetError):
        TTRecTable(5382, 16, 0.01, rank=10)


# --- DHE -------------------------------------------------------------------------------------------


def test_dhe_encoding_is_fixed_dense_and_distinct() -> None:
    table = DHETable(1000, 8, 0.5)
    enc = table.encode(torch.arange(1000))
    assert enc.shape == (1000, table.num_hashes) and enc.min() >= -1 and enc.max() <= 1
    assert torch.unique(enc, dim=0).shape[0] == 1000
    assert torch.equal(DHETable(1000, 8, 0.5).encode(torch.arange(5)), enc[:5])  # recomputed from the seed
    assert not list(table.buffers())  # nothing but the MLP is stored


def test_dhe_takes_the_widest_network_that_fits() -> None:
    table = DHETable(5382, 16, 0.1)
    floats = table.budget_bytes() // 4
    assert table.memory_bytes() == 4 * mlp_floats(table.num_hashes, table.hidden, 2, 16) <= 4 * floats
    assert mlp_floats(table.num_hashes + 1, table.hidden + 1, 2, 16) > floats


def test_dhe_budget_error_when_the_mlp_alone_is_too_big() -> None:
    with pytest.raises(BudgetError, match="MLP alone") as info:
        DHETable(5382, 16, 0.1, num_hashes=1024, hidden=1800)  # the paper's network
    assert info.value.source == "dhe"
    assert DHETable(5382, 16, 0.5, num_hashes=64, hidden=128).hidden == 128


# --- ROBE ------------------------------------------------------------------------------------------


def test_robe_reads_hashed_circular_chunks() -> None:
    table = ROBETable(100, 6, 0.1, chunk=4, signed=False)  # 240 bytes -> 60 floats; chunks of 4 + 2
    assert table.size == 60 and table.memory_bytes() == 240
    with torch.no_grad():
        table.memory.copy_(torch.arange(60, dtype=torch.float32))
    for x in (0, 13, 99):
        want = []
        for c, width in ((0, 4), (1, 2)):
            start = int(universal_hash(torch.tensor(x * 2 + c), *table.offset_hash, 60))
            want += [(start + i) % 60 for i in range(width)]  # wraps around the end
        assert table.lookup(torch.tensor(x)).tolist() == want


def test_robe_sign_hash_flips_whole_values() -> None:
    signed = ROBETable(100, 8, 0.1)
    plain = ROBETable(100, 8, 0.1, signed=False)
    plain.load_state_dict(signed.state_dict())
    a, b = signed.lookup(torch.arange(100)), plain.lookup(torch.arange(100))
    assert torch.equal(a.abs(), b.abs()) and (a != b).any()


def test_robe_budget_error_without_room_for_a_chunk() -> None:
    with pytest.raises(BudgetError):
        ROBETable(10, 16, 0.01)


# --- DPQ / codes -----------------------------------------------------------------------------------


@given(st.sampled_from([1, 2, 4, 8, 16]), st.lists(st.integers(0, 2**16 - 1), max_size=60))
def test_packed_codes_round_trip(bits: int, values: list[int]) -> None:
    codes = torch.tensor([v % (1 << bits) for v in values], dtype=torch.int64)
    packed = pack_codes(codes, bits)
    assert packed.numel() * packed.element_size() == packed_bytes(len(values), bits)
    assert torch.equal(unpack_codes(packed, torch.arange(len(values)), bits), codes)


def test_plan_codes_maximises_code_bits_within_the_budget() -> None:
    assert plan_codes(5382, 16, 34364) == (8, 16)  # 8 groups x 4 bits; 4 x 8 bits would not fit
    assert plan_codes(5382, 16, 10**9) == (16, 256)
    assert plan_codes(5382, 16, 3364) == (2, 4)
    with pytest.raises(BudgetError):
        plan_codes(5382, 16, 600)  # 1-bit codes alone are 673 bytes


def test_dpq_straight_through_trains_queries_keys_and_values() -> None:
    table = DPQTable(50, 8, 0.5, groups=2, codewords=4)
    ids = torch.arange(50)
    out = table.lookup(ids)
    codes = table.codes(ids)
    hard = table.values[torch.arange(2), codes].flatten(-2)
    torch.testing.assert_close(out, hard)  # hard forward (+ soft - soft for the gradient)
    (out * torch.randn_like(out)).sum().backward()
    for param in (table.query, table.keys, table.values):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_codebook_table_stores_codes_and_codebook_only() -> None:
    dpq = DPQTable(50, 8, 0.5, groups=2, codewords=16)
    served = dpq.finalize()
    assert isinstance(served, CodebookTable) and served.bits == 4
    assert served.codes.dtype == torch.uint8 and served.codes.numel() == 50  # 100 4-bit codes
    assert served.memory_bytes() == 50 + 16 * 8 * 4
    assert torch.equal(served.lookup(torch.arange(50)), dpq.eval().lookup(torch.arange(50)))


# --- MGQE ------------------------------------------------------------------------------------------


def test_mgqe_tail_features_use_only_the_first_tail_codewords() -> None:
    counts = [1000 - i if i % 7 == 0 else 1 for i in range(300)]  # ids 0, 7, 14, ... are frequent
    table = MGQETable(300, 8, 0.5, groups=2, codewords=16, head_fraction=0.1, feature_counts=counts)
    assert table.tail_codewords == 4 and table.heads == 30
    head = torch.arange(0, 210, 7)
    assert torch.equal(torch.nonzero(table.is_head).reshape(-1), head)
    with torch.no_grad():  # make every feature prefer a high codeword: only the head may take it
        table.keys[:, 8:] = table.query.detach()[:, None, :4].mean(dim=0)
    codes = table.codes(torch.arange(300))
    tail = torch.ones(300, dtype=torch.bool)
    tail[head] = False
    assert codes[tail].max() < 4
    served = table.finalize()
    assert isinstance(served, TieredCodebookTable) and served.head_ids.dtype == torch.int16
    assert torch.equal(served.head_ids.long(), head)
    assert torch.equal(served.lookup(torch.arange(300)), table.eval().lookup(torch.arange(300)))


def test_mgqe_stores_fewer_bits_for_the_tail() -> None:
    served = MGQETable(1000, 8, 0.5, groups=4, codewords=256, head_fraction=0.25).finalize()
    assert served.tail_codewords == 16
    assert served.head_codes.numel() == 250 * 4  # 8 bits each
    assert served.tail_codes.numel() == 750 * 4 // 2  # 4 bits each
    assert served.memory_bytes() == 250 * 2 + 1000 + 1500 + 256 * 8 * 4


def test_mgqe_estimates_frequencies_while_training() -> None:
    table = MGQETable(100, 4, 0.5, groups=1, codewords=4, head_fraction=0.05)
    ids = torch.tensor([[3, 50], [3, 51], [3, 50], [99, 50], [3, 7]])
    table.lookup(ids).sum().backward()
    table.after_step(1, 10)
    assert table.counts[3] == 4 and table.counts[50] == 3
    assert set(torch.nonzero(table.is_head).reshape(-1).tolist()) == {3, 50, 7, 51, 99}
    with pytest.raises(InputError):
        MGQETable(100, 4, 0.5, feature_counts=[1, 2])


# --- dedup -----------------------------------------------------------------------------------------


def test_plan_unique_rows() -> None:
    assert plan_unique_rows(5382, 16, 34364) == 368  # 16-bit map (10,764 bytes) + 368 rows
    assert plan_unique_rows(5382, 16, 3364) == 10  # 4-bit map (2,691 bytes) + 10 rows
    assert plan_unique_rows(5382, 16, 300) == 0


def test_dedup_merges_identical_rows_losslessly() -> None:
    table = DedupTable(200, 4, 0.2)  # 640 bytes: 8-bit map (200 bytes) + 27 rows of 16 bytes
    assert table.unique_rows == 27
    distinct = torch.randn(10, 4)
    pick = torch.arange(200) % 10
    with torch.no_grad():
        table.weight.copy_(distinct[pick])
    served = table.finalize()
    assert served.codewords == 10
    assert torch.equal(served.lookup(torch.arange(200)), distinct[pick])


def test_dedup_eps_merges_near_duplicates_and_kmeans_meets_the_budget() -> None:
    rows = torch.tensor([[0.0, 0.0], [0.001, 0.0], [1.0, 1.0], [1.0, 1.002]])
    unique, counts, inverse = merge_close_rows(rows, eps=0.01)
    assert unique.shape[0] == 2 and counts.tolist() == [2.0, 2.0] and inverse.tolist() == [0, 0, 1, 1]
    points = torch.cat([torch.randn(50, 3) * 0.01 + c for c in (0.0, 5.0, -5.0)])
    centers, assign = weighted_kmeans(points, torch.ones(150), 3, 20, seed=0)
    assert sorted(torch.bincount(assign).tolist()) == [50, 50, 50]
    torch.testing.assert_close(centers.sum(dim=1).sort().values, torch.tensor([-15.0, 0.0, 15.0]),
                               atol=0.05, rtol=0)
    table = DedupTable(200, 4, 0.2)
    served = table.finalize()  # 200 random rows -> k-means to 27 centroids
    assert served.codewords == 27 and served.memory_bytes() <= 1.02 * served.budget_bytes()
