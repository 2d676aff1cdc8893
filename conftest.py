"""Hypothesis profiles for every test folder (tests/ and kernels/tests/).

Profiles: ``dev`` (default), ``ci`` (extends hypothesis' built-in ci profile; loaded when CI is set)
and ``nightly`` (many examples). First calls compile numba kernels, so no deadline anywhere.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci",
    parent=settings.get_profile("ci"),
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "nightly", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
