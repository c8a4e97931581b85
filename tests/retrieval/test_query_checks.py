"""One set of query checks for every index kind: a bad query fails the same way, naming the argument."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.query_checks import check_k, check_sparse_query, check_text, check_texts, query_batch
from sparsekit.errors import InputError


@pytest.mark.parametrize(("call", "source", "message"), [
    (lambda: check_text("  "), "text", "query is empty"),
    (lambda: check_text(3), "text", "query must be a string, got int"),
    (lambda: check_texts(["ok", "", "fine"]), "texts[1]", "query is empty"),
    (lambda: check_texts(["ok", None]), "texts[1]", "query must be a string, got NoneType"),
    (lambda: query_batch("apples"), "texts", "expected a list of query strings, got a str"),
    (lambda: check_k(0), "k", "must be a positive integer, got 0"),
    (lambda: check_k(True), "k", "must be a positive integer, got True"),
    (lambda: check_k(2.0, "depth"), "depth", "must be a positive integer, got 2.0"),
    (lambda: check_sparse_query([1, 7], [1.0, 1.0], 5), "query.indices[1]", "term id 7 out of range [0, 5)"),
    (lambda: check_sparse_query([-1], [1.0], 5), "query.indices[0]", "term id -1 out of range [0, 5)"),
    (lambda: check_sparse_query([1, 2], [1.0, float("nan")], 5), "query.values[1]",
     "weight nan is not finite and >= 0"),
    (lambda: check_sparse_query([1, 2], [1.0], 5), "query.values", "expected 2 numbers (one per index), got "
                                                                   "float64[1]"),
    (lambda: check_sparse_query([1.5], [1.0], 5), "query.indices", "expected a 1-D list of integer term ids, "
                                                                   "got float64[1]"),
])
def test_each_check_names_the_argument(call, source: str, message: str) -> None:
    with pytest.raises(InputError) as error:
        call()
    assert error.value.source == source and error.value.reason == message


def test_good_queries_pass_through() -> None:
    assert check_texts(("a", "b c")) == ["a", "b c"]
    assert check_k(np.int64(5)) == 5
    assert query_batch([]) == []
    terms, weights = check_sparse_query([4, 0], [0.5, 2], 5)
    assert terms.tolist() == [4, 0] and weights.tolist() == [0.5, 2.0]
