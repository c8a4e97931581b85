"""Sparsekit core: the small layer every package shares.

Artifact directories with manifests and atomic writes (:mod:`sparsekit.artifacts`), atomic
single-file writes (:mod:`sparsekit.atomic`), the data root
(:mod:`sparsekit.dataroot`), device selection (:mod:`sparsekit.device`) and the error types that
name the offending input (:mod:`sparsekit.errors`). It imports none of the other packages.
"""

__version__ = "0.1.0"
