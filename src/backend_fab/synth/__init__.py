"""Synthetic back-end fab with ground truth: wafer sort, assembly and final test.

``generate_fab(scenario_or_config, seed=None) -> SynthFab`` builds products, lots, wafer maps with
planted WM-811K signatures, parametric data with planted outliers, a latent-reliability risk,
assembly genealogy and final-test results, all as canonical tables plus ground-truth tables.
``patterns`` (the signature library) is importable on its own and light (numpy only).
"""

from __future__ import annotations

import importlib

__all__ = [
    "PATTERN_CLASSES",
    "SynthFab",
    "draw_signature",
    "generate_fab",
    "load_scenario",
    "scenario_names",
]

_LAZY = {
    "PATTERN_CLASSES": "backend_fab.synth.patterns",
    "draw_signature": "backend_fab.synth.patterns",
    "SynthFab": "backend_fab.synth.generator",
    "generate_fab": "backend_fab.synth.generator",
    "load_scenario": "backend_fab.synth.scenarios",
    "scenario_names": "backend_fab.synth.scenarios",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'backend_fab.synth' has no attribute {name!r}")
