"""Decision-tree ensembles stored as flat arrays: class probabilities and per-feature contributions.

A forest of ``T`` trees with ``N`` nodes in all is five arrays over the nodes, trees one after the
other (tree ``t`` owns nodes ``tree_offsets[t]:tree_offsets[t + 1]``, its root first):

* ``feature`` (int32): the feature tested at a split node; ``-1`` at a leaf;
* ``threshold`` (float64): go left when ``x[feature] <= threshold`` (the value is compared as
  float32, the way scikit-learn's trees compare it);
* ``left``, ``right`` (int32): the children, as node indices into the whole forest; ``-1`` at a
  leaf;
* ``value`` (float64, ``(N, n_classes)``): the class distribution at each node (rows sum to 1).

That is exactly what a fitted scikit-learn ``RandomForestClassifier`` or ``ExtraTreesClassifier``
holds (``tree_.feature``, ``threshold``, ``children_left``/``_right``, ``value``), so a forest can be
saved as plain arrays (``np.savez``) and evaluated without unpickling anything.

:func:`forest_proba` averages the leaf distributions over the trees (scikit-learn's
``predict_proba``). :func:`forest_contributions` splits one class's probability into a bias (the
mean root distribution) plus one term per feature: along each tree's path every split moves the
distribution from the parent's to the child's, and the move is credited to the split feature
(Saabas, "Interpreting random forests", 2014; the decomposition is exact:
``bias + contributions.sum(axis=1) == forest_proba[:, class]``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from backend_fab_kernels._config import JIT, PARALLEL_JIT
from backend_fab_kernels._core import as_array, check_offsets
from backend_fab_kernels._grid import writable

__all__ = ["check_forest", "forest_contributions", "forest_proba"]


@njit(**JIT)
def _leaf(xrow, root, feature, threshold, left, right):
    node = root
    while left[node] >= 0:
        node = left[node] if np.float32(xrow[feature[node]]) <= threshold[node] else right[node]
    return node


@njit(**PARALLEL_JIT)
def _forest_proba(X, feature, threshold, left, right, value, tree_offsets):
    n = X.shape[0]
    n_classes = value.shape[1]
    n_trees = tree_offsets.size - 1
    out = np.zeros((n, n_classes))
    for i in prange(n):
        for t in range(n_trees):
            leaf = _leaf(X[i], tree_offsets[t], feature, threshold, left, right)
            for c in range(n_classes):
                out[i, c] += value[leaf, c]
        for c in range(n_classes):
            out[i, c] /= n_trees
    return out


@njit(**PARALLEL_JIT)
def _forest_contributions(X, feature, threshold, left, right, value, tree_offsets, cls):
    n, n_features = X.shape
    n_trees = tree_offsets.size - 1
    contrib = np.zeros((n, n_features))
    bias = np.zeros(n)
    for i in prange(n):
        c = cls[i]
        for t in range(n_trees):
            node = tree_offsets[t]
            bias[i] += value[node, c]
            while left[node] >= 0:
                f = feature[node]
                child = left[node] if np.float32(X[i, f]) <= threshold[node] else right[node]
                contrib[i, f] += value[child, c] - value[node, c]
                node = child
        bias[i] /= n_trees
        for f in range(n_features):
            contrib[i, f] /= n_trees
    return bias, contrib


def check_forest(
    feature, threshold, left, right, value, tree_offsets, n_features: int | None = None
):
    """Validate and coerce forest arrays (see the module docstring); returns them in kernel dtypes.

    Raises ValueError when lengths disagree, a child index leaves its tree or does not point
    forward (trees must be stored root first, children after parents, as scikit-learn stores
    them), a split feature is out of range, or a leaf is half a split.
    """
    # writeable copies of read-only arrays: numba would compile a second signature for them
    feat = writable(as_array("feature", feature, np.int32, ndim=1))
    thr = writable(as_array("threshold", threshold, np.float64, ndim=1))
    lft = writable(as_array("left", left, np.int32, ndim=1))
    rgt = writable(as_array("right", right, np.int32, ndim=1))
    val = writable(as_array("value", value, np.float64, ndim=2))
    n = feat.size
    if not (thr.size == lft.size == rgt.size == val.shape[0] == n):
        raise ValueError(
            f"forest arrays disagree in length: feature {n}, threshold {thr.size}, left "
            f"{lft.size}, right {rgt.size}, value {val.shape[0]}"
        )
    off = writable(check_offsets("tree_offsets", tree_offsets, n))
    if off.size < 2 or np.any(np.diff(off) < 1):
        raise ValueError("tree_offsets: every tree needs at least one node")
    if val.shape[1] < 1:
        raise ValueError("value: needs at least one class column")
    owner = np.repeat(np.arange(off.size - 1), np.diff(off))
    is_leaf = lft < 0
    if np.any(is_leaf != (rgt < 0)) or np.any(is_leaf != (feat < 0)):
        raise ValueError("a node is neither a leaf (-1, -1, feature -1) nor a full split")
    split = ~is_leaf
    idx = np.arange(n)
    for name, child in (("left", lft), ("right", rgt)):
        c = child[split]
        if (
            np.any(c >= n)
            or np.any(c <= idx[split])
            or np.any(owner[np.minimum(c, n - 1)] != owner[split])
        ):
            raise ValueError(f"{name}: a child index points outside its tree or backwards")
    if n_features is not None and np.any(feat[split] >= n_features):
        raise ValueError(f"feature: a split uses a feature >= n_features ({n_features})")
    return feat, thr, lft, rgt, val, off


def _check_x(X, feat) -> np.ndarray:
    xa = writable(as_array("X", X, np.float64, ndim=2))
    split = feat >= 0
    if split.any() and feat[split].max() >= xa.shape[1]:
        raise ValueError(
            f"X has {xa.shape[1]} features but the forest splits on feature {int(feat[split].max())}"
        )
    return xa


def forest_proba(X, feature, threshold, left, right, value, tree_offsets) -> np.ndarray:
    """Mean leaf class distribution over the trees for each row of ``X``: ``(n, n_classes)``.

    ``X``: ``(n, n_features)`` float (NaN is not supported: a NaN goes right). See the module
    docstring for the forest arrays.
    """
    feat, thr, lft, rgt, val, off = check_forest(
        feature, threshold, left, right, value, tree_offsets
    )
    xa = _check_x(X, feat)
    return _forest_proba(xa, feat, thr, lft, rgt, val, off)


def forest_contributions(X, feature, threshold, left, right, value, tree_offsets, cls):
    """Per-feature contributions to the probability of class ``cls[i]`` for each row of ``X``.

    Returns ``(bias (n,), contributions (n, n_features))`` with
    ``bias + contributions.sum(axis=1) == forest_proba(X, ...)[arange(n), cls]`` (up to rounding).
    """
    feat, thr, lft, rgt, val, off = check_forest(
        feature, threshold, left, right, value, tree_offsets
    )
    xa = _check_x(X, feat)
    c = writable(as_array("cls", cls, np.int64, ndim=1))
    if c.size != xa.shape[0]:
        raise ValueError(f"cls has {c.size} entries for {xa.shape[0]} rows of X")
    if c.size and (c.min() < 0 or c.max() >= val.shape[1]):
        raise ValueError(f"cls must lie in 0..{val.shape[1] - 1}")
    return _forest_contributions(xa, feat, thr, lft, rgt, val, off, c)


def _warmup_forest():
    arrays = (
        np.array([0, -1, -1], dtype=np.int32),
        np.array([0.5, 0.0, 0.0]),
        np.array([1, -1, -1], dtype=np.int32),
        np.array([2, -1, -1], dtype=np.int32),
        np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]),
        np.array([0, 3], dtype=np.int64),
    )
    return (np.array([[0.0], [1.0]]), *arrays), {}


def _warmup_contributions():
    args, _ = _warmup_forest()
    return (*args, np.array([0, 1], dtype=np.int64)), {}


#: Inputs for ``backend-fab warmup``.
WARMUP_EXAMPLES = {
    "forest_proba": _warmup_forest,
    "forest_contributions": _warmup_contributions,
    "check_forest": lambda: (_warmup_forest()[0][1:], {}),
}
