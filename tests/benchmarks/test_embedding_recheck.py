"""The recheck of the embedding grid's target cells: which cells a --models run judges, and what it says
it leaves out."""

from pathlib import Path

import polars as pl
import pytest

from benchmarks.embedding_recheck import acceptance, caveats, cells, configs


def test_cells_default_is_every_target_cell() -> None:
    assert cells() == {"dcnv2": (0.1, 0.01), "deepfm": (0.1,)}


def test_cells_of_one_model() -> None:
    assert cells(("deepfm",)) == {"deepfm": (0.1,)}
    assert [c.models for c in configs(Path("w"), (0,), ("deepfm",))] == [("deepfm",)]


def test_model_without_target_is_refused_by_name() -> None:
    with pytest.raises(SystemExit, match="wdl"):
        cells(("wdl",))


def test_caveat_names_the_cells_left_to_other_files() -> None:
    (text,) = caveats(cells(("deepfm",)))
    assert "DeepFM at 0.1" in text and "other target cells (DCNv2 at 0.1 and 0.01)" in text
    (text,) = caveats(cells())
    assert "other target cells" not in text


def test_acceptance_judges_only_the_checked_cells() -> None:
    best = pl.DataFrame({"model": ["deepfm"], "budget": [0.1], "method": ["qr"], "gap_to_full": [0.0041]})
    (entry,) = acceptance(best, cells(("deepfm",)))
    assert entry["criterion"].startswith("best method at budget 0.1, deepfm")
    assert entry["value"] == pytest.approx(0.0041, abs=1e-6) and entry["pass"] is False
