"""The synthetic-scale entry of benchmarks/embedding_compression.py: a run that skipped it is no pass."""

from __future__ import annotations

from benchmarks.embedding_compression import synthetic_entry


def test_a_skipped_synthetic_section_is_not_measured_not_passed() -> None:
    skipped = synthetic_entry({})  # --skip-synthetic, as stored in metrics and read back by --rescore
    assert skipped["pass"] is False and skipped["value"] is None and "not measured" in skipped["criterion"]


def test_the_synthetic_entry_counts_the_feasible_methods_measured() -> None:
    syn = {"embeddingbag": {"status": "ok"}, "qr": {"status": "ok"}, "dhe": {"status": "infeasible"},
           "tt_rec": {"status": "error"}}
    got = synthetic_entry(syn)
    assert (got["value"], got["target"], got["pass"]) == (1, 2, False)
    syn["tt_rec"] = {"status": "ok"}
    assert synthetic_entry(syn)["pass"] is True
