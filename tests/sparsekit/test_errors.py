"""Sparsekit's errors survive pickling, so a worker pool reports them instead of breaking."""

import pickle

from sparsekit.errors import ArtifactError, InputError


def test_input_error_pickles_with_its_source_and_line() -> None:
    error = pickle.loads(pickle.dumps(InputError("qrels.tsv", "bad score", line=7)))
    assert isinstance(error, InputError)
    assert (error.source, error.reason, error.line) == ("qrels.tsv", "bad score", 7)
    assert str(error) == "qrels.tsv:7: bad score"


def test_artifact_error_pickles_with_its_path() -> None:
    error = pickle.loads(pickle.dumps(ArtifactError("runs/index", "missing manifest")))
    assert isinstance(error, ArtifactError)
    assert str(error) == "runs/index: missing manifest"
