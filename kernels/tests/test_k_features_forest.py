"""Tree-ensemble kernels (flat-array forests) against the naive references."""

from __future__ import annotations

import naive_features as naive
import numpy as np
import pytest
from backend_fab_kernels import tree_ensemble
from hypothesis import given
from hypothesis import strategies as st


@st.composite
def forests(draw, max_trees: int = 4, max_features: int = 5, max_classes: int = 4):
    """Random valid forests (root first, children after parents) and rows of X to score."""
    n_features = draw(st.integers(1, max_features))
    n_classes = draw(st.integers(1, max_classes))
    feature, threshold, left, right, value, offsets = [], [], [], [], [], [0]
    for _ in range(draw(st.integers(1, max_trees))):
        base = offsets[-1]
        # grow breadth-first: node k splits while budget lasts, children appended at the end
        n_nodes = 1
        k = 0
        tree_f, tree_t, tree_l, tree_r = [], [], [], []
        while k < n_nodes:
            split = n_nodes + 2 <= 15 and draw(st.booleans())
            if split:
                tree_f.append(draw(st.integers(0, n_features - 1)))
                tree_t.append(draw(st.floats(-3, 3, allow_nan=False, width=32)))
                tree_l.append(base + n_nodes)
                tree_r.append(base + n_nodes + 1)
                n_nodes += 2
            else:
                tree_f.append(-1)
                tree_t.append(0.0)
                tree_l.append(-1)
                tree_r.append(-1)
            k += 1
        weights = draw(
            st.lists(
                st.lists(st.floats(0.01, 1.0), min_size=n_classes, max_size=n_classes),
                min_size=n_nodes,
                max_size=n_nodes,
            )
        )
        w = np.array(weights)
        value.append(w / w.sum(axis=1, keepdims=True))
        feature += tree_f
        threshold += tree_t
        left += tree_l
        right += tree_r
        offsets.append(base + n_nodes)
    n_rows = draw(st.integers(0, 6))
    X = np.array(
        draw(
            st.lists(
                st.lists(
                    st.floats(-4, 4, allow_nan=False), min_size=n_features, max_size=n_features
                ),
                min_size=n_rows,
                max_size=n_rows,
            )
        ),
        dtype=float,
    ).reshape(n_rows, n_features)
    cls = np.array(draw(st.lists(st.integers(0, n_classes - 1), min_size=n_rows, max_size=n_rows)))
    arrays = (
        np.array(feature, dtype=np.int32),
        np.array(threshold),
        np.array(left, dtype=np.int32),
        np.array(right, dtype=np.int32),
        np.concatenate(value),
        np.array(offsets, dtype=np.int64),
    )
    return X, arrays, cls.astype(np.int64)


def _read_only(a):
    b = np.array(a)
    b.flags.writeable = False
    return b


@given(forests())
def test_forest_proba_matches_naive(case):
    X, arrays, _ = case
    got = tree_ensemble.forest_proba(X, *arrays)
    np.testing.assert_allclose(got, naive.forest_proba(X, *arrays), rtol=1e-12, atol=1e-12)
    ro = tree_ensemble.forest_proba(_read_only(X), *(_read_only(a) for a in arrays))
    np.testing.assert_array_equal(ro, got)


@given(forests())
def test_forest_contributions_match_naive_and_add_up(case):
    X, arrays, cls = case
    bias, contrib = tree_ensemble.forest_contributions(X, *arrays, cls)
    nb, nc = naive.forest_contributions(X, *arrays, cls)
    np.testing.assert_allclose(bias, nb, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(contrib, nc, rtol=1e-9, atol=1e-12)
    proba = tree_ensemble.forest_proba(X, *arrays)
    np.testing.assert_allclose(
        bias + contrib.sum(axis=1), proba[np.arange(cls.size), cls], atol=1e-12
    )
    ro = tree_ensemble.forest_contributions(
        _read_only(X), *(_read_only(a) for a in arrays), _read_only(cls)
    )
    np.testing.assert_array_equal(ro[1], contrib)


def test_forest_matches_scikit_learn():
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 6))
    y = (X[:, 0] + X[:, 1] ** 2 > 0.5).astype(int) + (X[:, 2] > 1)
    rf = RandomForestClassifier(n_estimators=7, random_state=0).fit(X, y)
    feature, threshold, left, right, value, offsets = [], [], [], [], [], [0]
    for est in rf.estimators_:
        t = est.tree_
        leaf = t.children_left < 0
        base = offsets[-1]
        feature.append(np.where(leaf, -1, t.feature))
        threshold.append(t.threshold)
        left.append(np.where(leaf, -1, t.children_left + base))
        right.append(np.where(leaf, -1, t.children_right + base))
        value.append(t.value[:, 0, :] / t.value[:, 0, :].sum(axis=1, keepdims=True))
        offsets.append(base + t.node_count)
    arrays = [np.concatenate(a) for a in (feature, threshold, left, right, value)]
    Xt = rng.normal(size=(200, 6))
    got = tree_ensemble.forest_proba(Xt, *arrays, np.array(offsets))
    np.testing.assert_allclose(got, rf.predict_proba(Xt), atol=1e-12)


def test_bad_forests_raise():
    ok = (
        np.array([0, -1, -1], dtype=np.int32),
        np.array([0.5, 0.0, 0.0]),
        np.array([1, -1, -1], dtype=np.int32),
        np.array([2, -1, -1], dtype=np.int32),
        np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]),
        np.array([0, 3]),
    )
    X = np.array([[0.0], [1.0]])
    np.testing.assert_array_equal(tree_ensemble.forest_proba(X, *ok), [[1.0, 0.0], [0.0, 1.0]])
    backwards = list(ok)
    backwards[2] = np.array([0, -1, -1], dtype=np.int32)
    with pytest.raises(ValueError, match="backwards"):
        tree_ensemble.forest_proba(X, *backwards)
    outside = list(ok)
    outside[3] = np.array([7, -1, -1], dtype=np.int32)
    with pytest.raises(ValueError, match="outside"):
        tree_ensemble.forest_proba(X, *outside)
    half = list(ok)
    half[3] = np.array([-1, -1, -1], dtype=np.int32)
    with pytest.raises(ValueError, match="neither"):
        tree_ensemble.forest_proba(X, *half)
    with pytest.raises(ValueError, match="features"):
        tree_ensemble.forest_proba(np.zeros((2, 0)), *ok)
    with pytest.raises(ValueError, match="length"):
        tree_ensemble.forest_proba(X, ok[0][:2], *ok[1:])
    with pytest.raises(ValueError, match="cls"):
        tree_ensemble.forest_contributions(X, *ok, np.array([0, 5]))
