"""Sparsekit core: the small layer every package shares.

Artifact directories with manifests and atomic writes (:mod:`sparsekit.artifacts`), atomic
single-file writes (:mod:`sparsekit.atomic`), the data root (:mod:`sparsekit.dataroot`), device
selection (:mod:`sparsekit.device`), the error types that name the offending input
(:mod:`sparsekit.errors`), range checks of config numbers (:mod:`sparsekit.bounds`), best-state model
selection (:mod:`sparsekit.best_state`) and the commit a result was produced at
(:mod:`sparsekit.provenance`). It imports none of the other packages.
"""

__version__ = "0.1.0"
