"""Shared pytest configuration.

Under CI (``CI`` set) hypothesis runs derandomized, so a property test explores the same examples on
every run and CI cannot fail by chance; locally it keeps exploring new examples.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
