"""Hot-path kernels: each Triton kernel sits beside its plain torch reference and one dispatcher.

The dispatcher runs the Triton kernel when its inputs live on a CUDA device and a CPU path (torch, numpy
or numba) otherwise, so every code path runs without a GPU (../shared/docs/DESIGN.md §6). Triton kernels
are tested on CPU with ``TRITON_INTERPRET=1`` against their references. Of Sparsekit this package
imports only :mod:`sparsekit.errors`.
"""

import importlib.util
from functools import lru_cache


@lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when the triton package can be imported (it ships with CUDA builds of torch)."""
    return importlib.util.find_spec("triton") is not None
