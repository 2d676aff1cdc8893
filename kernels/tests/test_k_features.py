"""Wafer-pattern feature kernels against the naive references in naive_features.py."""

from __future__ import annotations

import math

import naive_features as naive
import numpy as np
import pytest
from backend_fab_kernels import radon, wafer_features
from hypothesis import given, settings
from hypothesis import strategies as st

RTOL = 1e-9
ATOL = 1e-11
# The naive references are pure Python (brute-force ring depths, BFS components, dense weight
# matrices): a fraction of the profile's examples keeps the default run short, and the nightly
# profile still runs hundreds.
LIGHT = settings(max_examples=max(10, settings.default.max_examples // 2))
HEAVY = settings(max_examples=max(8, settings.default.max_examples // 4))


@st.composite
def wafer_groups(draw, max_wafers: int = 4, max_side: int = 12):
    """1-4 wafers of unique (x, y) die (empty wafers included) with a fail flag per die.

    Layouts are ellipses or scattered sets anywhere on the plane; fails are sparse noise, dense
    noise, a blob or a line, so that the region features meet real components.
    """
    n_w = draw(st.integers(1, max_wafers))
    xs: list[int] = []
    ys: list[int] = []
    fs: list[bool] = []
    offsets = [0]
    for _ in range(n_w):
        layout = draw(st.sampled_from(["ellipse", "ellipse", "scatter", "empty"]))
        ox = draw(st.integers(-30, 30))
        oy = draw(st.integers(-30, 30))
        if layout == "empty":
            pts: list[tuple[int, int]] = []
        elif layout == "ellipse":
            nx = draw(st.integers(1, max_side))
            ny = draw(st.integers(1, max_side))
            pts = [
                (ox + i, oy + j)
                for j in range(ny)
                for i in range(nx)
                if ((2 * i - nx + 1) / nx) ** 2 + ((2 * j - ny + 1) / ny) ** 2 <= 1.0
            ]
        else:
            pts = sorted(
                draw(
                    st.sets(
                        st.tuples(
                            st.integers(ox, ox + max_side - 1), st.integers(oy, oy + max_side - 1)
                        ),
                        min_size=1,
                        max_size=max_side * max_side // 2,
                    )
                )
            )
        n = len(pts)
        mode = draw(st.sampled_from(["sparse", "dense", "blob", "line"]))
        a = draw(st.lists(st.booleans(), min_size=n, max_size=n))
        b = draw(st.lists(st.booleans(), min_size=n, max_size=n))
        if mode == "sparse":
            fail = [p and q for p, q in zip(a, b, strict=True)]
        elif mode == "dense":
            fail = a
        elif mode == "blob":
            cx = draw(st.integers(ox, ox + max_side))
            cy = draw(st.integers(oy, oy + max_side))
            r2 = draw(st.integers(1, 16))
            fail = [
                (p[0] - cx) ** 2 + (p[1] - cy) ** 2 <= r2 or (q and r)
                for p, q, r in zip(pts, a, b, strict=True)
            ]
        else:
            dx, dy = draw(st.sampled_from([(1, 0), (0, 1), (1, 1), (1, -1), (2, 1)]))
            c = draw(st.integers(-40, 40))
            fail = [
                dy * p[0] - dx * p[1] == c or (q and r) for p, q, r in zip(pts, a, b, strict=True)
            ]
        order = draw(st.permutations(range(n)))
        xs += [pts[i][0] for i in order]
        ys += [pts[i][1] for i in order]
        fs += [fail[i] for i in order]
        offsets.append(len(xs))
    return (
        np.array(xs, dtype=np.int32),
        np.array(ys, dtype=np.int64),
        np.array(fs, dtype=bool),
        np.array(offsets, dtype=np.int64),
    )


def _same(got, want, rtol=RTOL, atol=ATOL):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)


def _read_only(*arrays):
    out = []
    for a in arrays:
        b = np.array(a)
        b.flags.writeable = False
        out.append(b)
    return out


@LIGHT
@given(wafer_groups())
def test_density_features_match_naive(groups):
    _same(wafer_features.density_features(*groups), naive.density_features(*groups))


@HEAVY
@given(wafer_groups())
def test_radial_features_match_naive(groups):
    _same(wafer_features.radial_features(*groups), naive.radial_features(*groups))


@LIGHT
@given(wafer_groups())
def test_angular_features_match_naive(groups):
    _same(wafer_features.angular_features(*groups), naive.angular_features(*groups))


@HEAVY
@given(wafer_groups())
def test_region_features_match_naive(groups):
    got = wafer_features.region_features(*groups)
    want = naive.region_features(*groups)
    _same(got, want, rtol=1e-9, atol=1e-9)
    # the component count is an integer: exact
    np.testing.assert_array_equal(got[:, 10], want[:, 10])


@HEAVY
@given(wafer_groups(max_wafers=3, max_side=10))
def test_radon_profile_matches_naive(groups):
    _same(
        wafer_features.radon_profile(*groups),
        naive.radon_profile(*groups),
        rtol=1e-9,
        atol=1e-9,
    )


@HEAVY
@given(wafer_groups(max_wafers=3, max_side=8), st.integers(1, 4), st.booleans())
def test_join_count_correlogram_matches_naive(groups, max_lag, queen):
    got = wafer_features.join_count_correlogram(*groups, max_lag=max_lag, queen=queen)
    want = naive.join_count_correlogram(*groups, max_lag=max_lag, queen=queen)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got[..., 0], want[..., 0])  # BB is a count: exact
    _same(got, want, rtol=1e-9, atol=1e-9)
    ro = wafer_features.join_count_correlogram(*_read_only(*groups), max_lag=max_lag, queen=queen)
    np.testing.assert_array_equal(ro, got)


@HEAVY
@given(wafer_groups(max_wafers=2, max_side=9))
def test_wafer_features_match_naive(groups):
    got = wafer_features.wafer_features(*groups)
    assert got.shape[1] == wafer_features.N_FEATURES == len(wafer_features.FEATURE_NAMES)
    _same(got, naive.wafer_features(*groups), rtol=1e-9, atol=1e-9)


@LIGHT
@given(wafer_groups())
def test_wafer_features_read_only_inputs(groups):
    want = wafer_features.wafer_features(*groups)
    got = wafer_features.wafer_features(*_read_only(*groups))
    np.testing.assert_array_equal(got, want)


@LIGHT
@given(wafer_groups(), st.randoms(use_true_random=False))
def test_wafer_features_do_not_depend_on_die_order(groups, rnd):
    x, y, fail, offsets = groups
    perm = np.arange(x.size)
    for w in range(offsets.size - 1):
        seg = perm[offsets[w] : offsets[w + 1]].tolist()
        rnd.shuffle(seg)
        perm[offsets[w] : offsets[w + 1]] = seg
    want = wafer_features.wafer_features(x, y, fail, offsets)
    got = wafer_features.wafer_features(x[perm], y[perm], fail[perm], offsets)
    np.testing.assert_array_equal(got, want)  # bit for bit, NaN rows included


@given(
    st.lists(
        st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=30),
        min_size=1,
        max_size=4,
    ).filter(lambda rows: len({len(r) for r in rows}) == 1),
    st.integers(1, 40),
)
def test_cubic_resample_matches_naive(rows, n_out):
    values = np.array(rows)
    _same(radon.cubic_resample(values, n_out), naive.cubic_resample(values, n_out), atol=1e-7)
    (ro,) = _read_only(values)
    _same(radon.cubic_resample(ro, n_out), naive.cubic_resample(values, n_out), atol=1e-7)


def test_cubic_resample_keeps_knots_and_lines():
    values = np.array([[0.0, 1.0, 4.0, 9.0, 16.0], [2.0, 4.0, 6.0, 8.0, 10.0]])
    out = radon.cubic_resample(values, 9)  # every other point is a knot
    np.testing.assert_allclose(out[:, ::2], values, atol=1e-12)
    np.testing.assert_allclose(out[1], np.linspace(2.0, 10.0, 9), atol=1e-12)


def test_join_count_anchor_from_domain():
    """DOMAIN.md 3.2: a 716-die circular grid, rook joins, p = 0.1 gives E = 13.72, Var = 20.73."""
    c = np.arange(-15, 15) + 0.5
    gx, gy = np.meshgrid(c, c)
    inside = gx**2 + gy**2 <= 15.0**2
    x = (gx[inside] - 0.5).astype(np.int64)
    y = (gy[inside] - 0.5).astype(np.int64)
    assert x.size == 716
    fail = np.zeros(x.size, dtype=bool)
    fail[::10] = True  # 72 fails: p = 72 / 716
    p = fail.mean()
    out = wafer_features.join_count_correlogram(
        x, y, fail, np.array([0, x.size]), max_lag=1, queen=False
    )[0, 0]
    joins = out[1] / p**2
    assert joins == pytest.approx(1372.0)
    # the variance the kernel used, against the formula with this grid's degrees
    grid = np.zeros((32, 32), dtype=bool)
    grid[y + 16, x + 16] = True
    deg = np.zeros_like(grid, dtype=np.int64)
    for sy, sx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        deg += np.roll(grid, (sy, sx), axis=(0, 1)) & grid
    s1 = 4.0 * joins
    s2 = 4.0 * float((deg[grid] ** 2).sum())

    def var(q):
        return 0.25 * (s1 * q**2 + (s2 - 2 * s1) * q**3 + (s1 - s2) * q**4)

    assert ((out[0] - out[1]) / out[2]) ** 2 == pytest.approx(var(p))
    assert joins * 0.01 == pytest.approx(13.72)
    assert var(0.1) == pytest.approx(20.73, abs=0.005)


def test_feature_groups_cover_the_names():
    names = wafer_features.FEATURE_NAMES
    assert len(set(names)) == len(names)
    covered = []
    for sl in wafer_features.FEATURE_GROUPS.values():
        covered.extend(range(sl.start, sl.stop))
    assert covered == list(range(len(names)))
    sizes = {k: s.stop - s.start for k, s in wafer_features.FEATURE_GROUPS.items()}
    assert (sizes["density"], sizes["radon"], sizes["geometry"]) == (13, 40, 6)  # Wu et al.


def test_known_maps():
    """Hand-checked values on a 5x5 full grid with a 2x2 fail block in a corner."""
    gx, gy = np.meshgrid(np.arange(5), np.arange(5))
    x, y = gx.ravel(), gy.ravel()
    fail = (x <= 1) & (y <= 1)
    off = np.array([0, 25])
    reg = wafer_features.region_features(x, y, fail, off)[0]
    names = wafer_features.FEATURE_NAMES[wafer_features.FEATURE_GROUPS["geometry"].start :]
    got = dict(zip(names[: reg.size], reg, strict=True))
    assert got["geom_area"] == pytest.approx(4 / 25)
    assert got["geom_perimeter"] == pytest.approx(8 / 5)
    assert got["geom_solidity"] == pytest.approx(1.0)
    assert got["geom_eccentricity"] == pytest.approx(0.0)
    assert got["cluster_edge_share"] == pytest.approx(1.0)  # rings 0-1 hold the corner block
    assert got["cluster_thinness"] == pytest.approx(4 / 16)
    assert got["cluster_kept_share"] == pytest.approx(1.0)
    rad = wafer_features.radial_features(x, y, fail, off)[0]
    assert rad[8] == pytest.approx(3 / 16)  # ring 0: 16 die, 3 of the block's die
    assert rad[9] == pytest.approx(1 / 8)  # ring 1: 8 die, die (1, 1)
    assert rad[10] == 0.0  # ring 2: the centre die
    jc = wafer_features.join_count_correlogram(x, y, fail, off, max_lag=1)[0, 0]
    assert jc[0] == 6  # a 2x2 block: 4 rook + 2 diagonal joins


def test_empty_wafer_gives_nan_and_full_wafer_is_finite():
    x = np.array([0, 1, 0, 1])
    y = np.array([0, 0, 1, 1])
    fail = np.array([True, False, True, True])
    out = wafer_features.wafer_features(x, y, fail, np.array([0, 0, 4, 4]))
    assert np.isnan(out[0]).all() and np.isnan(out[2]).all()
    assert np.isfinite(out[1]).all()


def test_bad_inputs_raise():
    x = np.array([0, 1, 1])
    y = np.array([0, 0, 0])
    fail = np.array([True, False, True])
    with pytest.raises(ValueError, match="same"):
        wafer_features.wafer_features(x, y, fail, np.array([0, 3]))
    with pytest.raises(ValueError, match="offsets"):
        wafer_features.wafer_features(x, y, fail, np.array([0, 2]))
    with pytest.raises(ValueError, match="same length"):
        wafer_features.wafer_features(x[:2], y, fail, np.array([0, 3]))
    with pytest.raises(ValueError, match="span"):
        wafer_features.wafer_features(
            np.array([0, 10**6]), np.array([0, 0]), np.array([True, False]), np.array([0, 2])
        )
    with pytest.raises(ValueError, match="max_lag"):
        wafer_features.join_count_correlogram(x[:2], y[:2], fail[:2], np.array([0, 2]), max_lag=0)
    assert math.isfinite(wafer_features.wafer_features(x[:2], y[:2], fail[:2], [0, 2])[0, 0])
