"""Wafer-map failure-pattern recognition: WM-811K-style features and a calibrated classifier.

* :func:`classify_wafers` (die table -> one class per wafer, lazy) and :func:`pattern_features`
  (die table -> one feature row per wafer);
* :class:`WaferPatternClassifier`, a scikit-learn estimator saved without pickle; the shipped
  model is trained on synthetic maps (:mod:`backend_fab.patterns.training`);
* ``backend-fab eval-patterns`` (:mod:`backend_fab.patterns.evaluate`): lot-disjoint
  cross-validation on synthetic maps and a check on real WM-811K maps.

Classes are the WM-811K ``failureType`` names (Wu, Jang & Chen, IEEE TSM 28(1), 2015):
``none, Center, Donut, Edge-Loc, Edge-Ring, Loc, Scratch, Random, Near-full``, plus ``unknown``
below the confidence threshold. scikit-learn loads only when a model is needed.
"""

from __future__ import annotations

import importlib

__all__ = [
    "DEFAULT_THRESHOLD",
    "FEATURE_NAMES",
    "PATTERN_CLASSES",
    "UNKNOWN",
    "WaferPatternClassifier",
    "classify_wafers",
    "default_model",
    "pattern_features",
]

_LAZY = {
    "classify_wafers": "backend_fab.patterns.classify",
    "DEFAULT_THRESHOLD": "backend_fab.patterns.classify",
    "UNKNOWN": "backend_fab.patterns.classify",
    "pattern_features": "backend_fab.patterns.features",
    "FEATURE_NAMES": "backend_fab.patterns.features",
    "WaferPatternClassifier": "backend_fab.patterns.model",
    "default_model": "backend_fab.patterns.model",
    "PATTERN_CLASSES": "backend_fab.synth.patterns",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'backend_fab.patterns' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
