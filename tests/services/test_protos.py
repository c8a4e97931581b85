"""The committed gRPC stubs must match what `make protos` generates from protos/."""

from __future__ import annotations

from pathlib import Path

from services.protogen import REPO, generate


def test_committed_stubs_match_protos(tmp_path: Path) -> None:
    written = generate(tmp_path)
    assert written, "no stubs generated"
    for fresh in written:
        committed = REPO / fresh.relative_to(tmp_path)
        assert committed.is_file(), f"{committed} missing: run `make protos`"
        drift = f"{committed} drifted from protos/: run `make protos`"
        assert committed.read_bytes() == fresh.read_bytes(), drift
