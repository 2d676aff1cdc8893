"""label_components and component_features against naive.py and scipy.ndimage.label."""

from __future__ import annotations

import naive
import numpy as np
import pytest
from backend_fab_kernels.components import FEATURE_NAMES, component_features, label_components
from grid_strategies import examples, read_only, wafers
from hypothesis import given
from hypothesis import strategies as st
from scipy import ndimage

RTOL = 1e-9
ATOL = 1e-9
STRUCTURE = {4: None, 8: np.ones((3, 3), dtype=bool)}


@given(wafers(), st.sampled_from([4, 8]))
def test_label_components_matches_naive_and_scipy(state, connectivity):
    labels, counts = label_components(state, connectivity)
    ref_labels, ref_counts = naive.label_components(state, connectivity)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(counts, ref_counts)
    for w in range(state.shape[0]):
        sp, n = ndimage.label(state[w] == 1, structure=STRUCTURE[connectivity])
        np.testing.assert_array_equal(labels[w], sp)
        assert counts[w] == n


@given(wafers(), st.sampled_from([4, 8]))
@examples(0.34)
def test_label_components_read_only_and_dtypes(state, connectivity):
    ro = read_only(state)
    labels, counts = label_components(ro, connectivity)
    np.testing.assert_array_equal(ro, state)
    for other in (state == 1, (state == 1).astype(np.int64)):
        l2, c2 = label_components(other, connectivity)
        np.testing.assert_array_equal(l2, labels)
        np.testing.assert_array_equal(c2, counts)
    two_d, n = label_components(state[0], connectivity)
    np.testing.assert_array_equal(two_d, labels[0])
    assert n.shape == (1,)


@given(
    wafers(),
    st.sampled_from([4, 8]),
    st.booleans(),
    st.one_of(st.none(), st.tuples(st.floats(-3, 15), st.floats(-3, 15))),
    st.one_of(st.none(), st.floats(0.5, 20), st.tuples(st.floats(0.5, 20), st.floats(0.5, 20))),
)
@examples(0.34)
def test_component_features_match_naive(state, connectivity, with_state, center, radius):
    labels, counts = label_components(state, connectivity)
    st_arg = read_only(state) if with_state else None
    feats, offsets = component_features(read_only(labels), counts, st_arg, center, radius)
    ref, ref_off = naive.component_features(labels, counts, st_arg, center, radius)
    assert feats.shape == (int(counts.sum()), len(FEATURE_NAMES))
    np.testing.assert_array_equal(offsets, ref_off)
    np.testing.assert_allclose(feats, ref, rtol=RTOL, atol=ATOL)


def test_features_of_known_shapes():
    state = np.zeros((1, 21, 21), dtype=np.int8)
    state[0, 10, 2:19] = 1  # a horizontal scratch through the centre
    state[0, 0:3, 0:3] = 1  # a 3x3 block in a corner
    labels, n = label_components(state, 8)
    feats, _ = component_features(labels, n, state, center=(10, 10), radius=10.5)
    f = {name: feats[:, i] for i, name in enumerate(FEATURE_NAMES)}
    block, line = (0, 1) if f["size"][0] == 9 else (1, 0)
    assert f["size"][line] == 17 and f["linearity"][line] == pytest.approx(1.0)
    assert f["eccentricity"][line] == pytest.approx(1.0)
    assert f["minor_axis"][line] == pytest.approx(0.0, abs=1e-12)
    assert f["solidity"][line] == pytest.approx(1.0)
    assert f["radius"][line] == pytest.approx(0.0, abs=1e-12)
    assert f["angular_span"][line] == pytest.approx(180.0)
    assert f["linearity"][block] == pytest.approx(0.0, abs=1e-12)
    assert f["touches_edge"][block] == 1.0 and f["touches_edge"][line] == 0.0
    assert f["angle"][block] == pytest.approx(225.0)


def test_validation():
    with pytest.raises(ValueError, match="connectivity"):
        label_components(np.zeros((2, 2), dtype=bool), 6)
    with pytest.raises(ValueError, match="2-d"):
        label_components(np.zeros(4, dtype=bool))
    labels, _ = label_components(np.ones((1, 2, 2), dtype=bool))
    with pytest.raises(ValueError, match="n_labels"):
        component_features(labels, np.array([0, 1]))
    with pytest.raises(ValueError, match="labels must lie"):
        component_features(labels, np.array([0]))
