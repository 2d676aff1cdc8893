"""The nightly batch: score every new or changed lot of the lake, write alarms and a report.

``nightly_command`` is the ``backend-fab nightly`` command (an exit code); ``run_nightly`` is the
same as a function returning a :class:`NightlyResult`. See :mod:`backend_fab.nightly.run` for
the sequence of a night and why it is safe to interrupt.
"""

from __future__ import annotations

from backend_fab.nightly.recipe import NightlyRecipe, load_recipe
from backend_fab.nightly.run import NightlyResult, discover_lots, nightly_command, run_nightly

__all__ = [
    "NightlyRecipe",
    "NightlyResult",
    "discover_lots",
    "load_recipe",
    "nightly_command",
    "run_nightly",
]
