"""Signature library: WM-811K classes on the unit disk, reticle repeats, bad sites."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend_fab.layout import Layout
from backend_fab.synth.patterns import (
    PATTERN_CLASSES,
    WM811K_FRACTIONS,
    bad_site,
    combine,
    draw_signature,
    estimate_pitch,
    reticle_repeat,
    sample_fails,
)

LAYOUT = Layout("P", 200.0, 4.0, 4.0, 3.0, reticle_cols=4, reticle_rows=3)
X, Y = LAYOUT.gross_die()
U, V = LAYOUT.normalized(X, Y)
RING = LAYOUT.ring_index(X, Y)
RHO = np.hypot(U, V)


def test_class_names_are_the_wm811k_names():
    assert PATTERN_CLASSES == (
        "none",
        "Center",
        "Donut",
        "Edge-Loc",
        "Edge-Ring",
        "Loc",
        "Scratch",
        "Random",
        "Near-full",
    )
    assert set(WM811K_FRACTIONS) == set(PATTERN_CLASSES)
    assert abs(sum(WM811K_FRACTIONS.values()) - 1.0) < 1e-12


@given(
    kind=st.sampled_from(PATTERN_CLASSES),
    seed=st.integers(0, 2**32 - 1),
    size=st.sampled_from([(100.0, 10.0), (200.0, 4.0), (300.0, 12.0), (150.0, 30.0)]),
)
def test_probabilities_are_valid_and_params_redraw_the_same_map(kind, seed, size):
    layout = Layout("P", size[0], size[1], size[1] * 0.8, 2.0)
    u, v = layout.normalized(*layout.gross_die())
    p, used = draw_signature(kind, u, v, np.random.default_rng(seed))
    assert p.shape == u.shape and p.dtype == np.float64
    assert np.all((p >= 0) & (p <= 1))
    assert used["kind"] == kind
    json.dumps(used)  # storable as truth
    p2, used2 = draw_signature(kind, u, v, np.random.default_rng(seed + 1), **used)
    np.testing.assert_allclose(p2, p, rtol=0, atol=1e-12)
    assert used2 == used
    p3, _ = draw_signature(kind, u, v, np.random.default_rng(seed))
    assert np.array_equal(p3, p)


def _fail_stats(kind, n=40, seed=7):
    rng = np.random.default_rng(seed)
    rings, rhos, rates = [], [], []
    for _ in range(n):
        p, _ = draw_signature(kind, U, V, rng)
        f = sample_fails(p, rng)
        rates.append(f.mean())
        if f.any():
            rings.append(RING[f].mean())
            rhos.append(RHO[f].mean())
    return np.mean(rings), np.mean(rhos), np.mean(rates)


def test_spatial_classes_put_their_fails_where_they_belong():
    ring_all, rho_all = RING.mean(), RHO.mean()
    ring_edge, _, _ = _fail_stats("Edge-Ring")
    _, rho_center, _ = _fail_stats("Center")
    ring_eloc, _, _ = _fail_stats("Edge-Loc")
    _, rho_donut, _ = _fail_stats("Donut")
    ring_none, rho_none, rate_none = _fail_stats("none")
    _, _, rate_random = _fail_stats("Random")
    _, _, rate_full = _fail_stats("Near-full")
    # Edge-Ring: fails within the outer ~2 rings on average (wafer mean ~7)
    assert ring_edge < 2.5 < ring_all
    assert ring_eloc < 0.6 * ring_all
    # Center: fails well inside
    assert rho_center < 0.45 < rho_all
    assert 0.3 < rho_donut < 0.65
    # none and Random are spatially uniform: their means match the wafer's
    assert abs(ring_none - ring_all) < 0.8 and abs(rho_none - rho_all) < 0.05
    assert rate_none < 0.06 < 0.15 < rate_random < 0.5 < 0.8 < rate_full


def test_scratch_is_thin_and_long():
    rng = np.random.default_rng(3)
    p, used = draw_signature(
        "Scratch",
        U,
        V,
        rng,
        x0=-0.4,
        y0=0.0,
        angle=0.0,
        length=0.8,
        curvature=0.0,
        width=1.5,
        density=1.0,
        background=0.0,
    )
    hot = p > 0.5
    assert np.all(np.abs(V[hot]) <= 1.0 * used["die_pitch"] + 1e-9)
    assert U[hot].min() >= -0.4 - 1e-9 and U[hot].max() <= 0.4 + 1e-9
    assert hot.sum() >= 0.7 * 0.8 / used["die_pitch"]


def test_fixed_parameter_is_honoured_and_others_unchanged():
    _, a = draw_signature("Loc", U, V, np.random.default_rng(11))
    _, b = draw_signature("Loc", U, V, np.random.default_rng(11), radius=0.1)
    assert b["radius"] == 0.1
    assert {k: v for k, v in a.items() if k != "radius"} == {
        k: v for k, v in b.items() if k != "radius"
    }


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown pattern class"):
        draw_signature("edge-ring", U, V, 0)
    with pytest.raises(ValueError, match="unknown parameter"):
        draw_signature("Center", U, V, 0, width=0.2)
    with pytest.raises(ValueError, match="shape"):
        draw_signature("Center", U, V[:-1], 0)
    with pytest.raises(ValueError, match="density"):
        draw_signature("Random", U, V, 0, density=1.5)
    p, used = draw_signature("Center", np.array([]), np.array([]), 0)
    assert p.size == 0 and used["kind"] == "Center"


def test_pitch_estimate():
    assert estimate_pitch(U, V) == pytest.approx(4.0 / 100.0)


def test_reticle_repeat_hits_the_same_field_position_in_every_shot():
    rx, ry = LAYOUT.reticle_xy(X, Y)
    p, used = reticle_repeat(rx, ry, np.random.default_rng(2), reticle_cols=4, reticle_rows=3)
    hit = p > 0
    positions = {tuple(q) for q in used["positions"]}
    assert set(zip(rx[hit].tolist(), ry[hit].tolist(), strict=True)) == positions
    assert np.all(p[hit] == used["density"])
    fx, fy = LAYOUT.reticle_field(X, Y)
    assert len(set(zip(fx[hit].tolist(), fy[hit].tolist(), strict=True))) > 50
    p2, _ = reticle_repeat(rx, ry, 0, reticle_cols=4, reticle_rows=3, positions=[(3, 2)], density=1)
    assert np.array_equal(p2 > 0, (rx == 3) & (ry == 2))
    with pytest.raises(ValueError, match="outside"):
        reticle_repeat(rx, ry, 0, reticle_cols=4, reticle_rows=3, positions=[(4, 0)])


def test_bad_site_and_combine():
    site = np.arange(X.size) % 4
    p, used = bad_site(site, np.random.default_rng(5), n_sites=4)
    assert np.all((p > 0) == (site == used["site"]))
    assert 0.05 <= used["extra"] <= 0.25
    with pytest.raises(ValueError, match="site"):
        bad_site(site, 0, n_sites=4, bad=4)
    c = combine(np.array([0.5, 0.0]), np.array([0.5, 0.2]))
    np.testing.assert_allclose(c, [0.75, 0.2])
