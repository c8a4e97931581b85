"""Shared pytest configuration.

Under CI (``CI`` set) hypothesis runs derandomized, so a property test explores the same examples on
every run and CI cannot fail by chance; locally it keeps exploring new examples.
"""

import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread while a test runs: suites of tiny tensor ops are many times faster than
    with threads spinning against other processes for the two CI cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
