"""Sub-commands of the ``sparsekit`` CLI, one module per area; :mod:`services.cli` registers them."""
