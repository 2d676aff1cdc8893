"""``WaferPatternClassifier``: a calibrated tree ensemble on wafer-map features, saved without pickle.

The model is a random forest (or extremely randomised trees) grown by scikit-learn and then kept as
plain arrays (:mod:`backend_fab_kernels.tree_ensemble`): predictions run in a numba kernel, and the
model file is an ``.npz`` of those arrays plus a JSON header, read with ``allow_pickle=False`` and
validated before use, so loading a model never runs code from the file.

Probabilities are calibrated by temperature scaling (Guo et al., "On calibration of modern neural
networks", ICML 2017) fitted on the out-of-bag predictions of the forest: ``p_k ∝ (q_k + ε)^(1/T)``
with ``q`` the mean leaf distribution, ``ε = 1e-4`` and ``T`` minimising the out-of-bag log loss.
Every tree predicts each training wafer it did not see (about a third of the trees per wafer),
so the calibration needs no held-out split.

With ``threshold`` set, :meth:`WaferPatternClassifier.predict` answers ``unknown_label`` where the
calibrated probability of the best class is below it (open-set refusal: a map unlike anything
trained on, or halfway between two classes, is flagged for a person rather than forced into a
class). ``threshold=None`` (the default) always names a class, as scikit-learn expects.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from backend_fab.errors import PatternModelError

__all__ = [
    "DEFAULT_MODEL_PATH",
    "MODEL_FORMAT",
    "WaferPatternClassifier",
    "build_default_model",
    "default_model",
    "feature_set_id",
]

log = logging.getLogger(__name__)

#: Identifier written in every model file's header.
MODEL_FORMAT = "backend-fab/wafer-pattern-model"
_MODEL_VERSION = 1
_EPS = 1e-4
_ARRAYS = (
    "classes",
    "feature",
    "threshold",
    "left",
    "right",
    "value",
    "tree_offsets",
    "importances",
)

#: The model shipped with the package (built by :func:`build_default_model`).
DEFAULT_MODEL_PATH = Path(__file__).with_name("default_model.npz")

#: Training set of the shipped model: maps per class and seed of ``training.generate_maps``.
DEFAULT_TRAINING = {"n_per_class": 1200, "seed": 20150101, "lot_size": 25}
#: Hyper-parameters of the shipped model.
DEFAULT_PARAMS = {"n_estimators": 150, "min_samples_leaf": 3, "max_features": "sqrt"}


def feature_set_id() -> str:
    """A short hash of the feature names and their definition version: models trained on other
    features are refused (or rebuilt, for the default model)."""
    from backend_fab.patterns.features import FEATURE_NAMES, FEATURES_VERSION

    text = f"{FEATURES_VERSION}|" + ",".join(FEATURE_NAMES)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _temper(q: np.ndarray, temperature: float) -> np.ndarray:
    p = np.power(q + _EPS, 1.0 / temperature)
    return p / p.sum(axis=1, keepdims=True)


def _fit_temperature(q: np.ndarray, y: np.ndarray) -> float:
    """Temperature minimising the log loss of ``_temper(q, T)`` against labels ``y``."""
    from scipy.optimize import minimize_scalar

    logq = np.log(q + _EPS)

    def loss(log_t: float) -> float:
        z = logq / math.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(y.size), y]))

    res = minimize_scalar(loss, bounds=(math.log(0.05), math.log(5.0)), method="bounded")
    return float(math.exp(res.x))


class WaferPatternClassifier(ClassifierMixin, BaseEstimator):
    """Wafer-map failure-pattern classifier: a tree ensemble with calibrated probabilities.

    A scikit-learn classifier on a feature matrix (for wafer maps: the columns of
    :data:`backend_fab.patterns.features.FEATURE_NAMES`; :func:`backend_fab.patterns.classify_wafers`
    builds them from a die table). Any labels work; the shipped model uses the WM-811K class names.

    Parameters
    ----------
    n_estimators : int
        Number of trees.
    max_features : "sqrt", "log2", int, float or None
        Features tried per split (as in scikit-learn's forests).
    min_samples_leaf : int
        Smallest leaf; larger leaves give smoother probabilities and a smaller model file.
    max_depth : int or None
        Depth limit of the trees.
    extra_trees : bool
        Extremely randomised trees (random split thresholds) instead of a random forest.
    calibrate : bool
        Fit the temperature on out-of-bag predictions (else ``temperature_ = 1``).
    threshold : float in [0, 1] or None
        :meth:`predict` answers ``unknown_label`` where the best calibrated probability is below
        it; ``None`` never does.
    unknown_label : object
        The answer below ``threshold``.
    random_state : int, RandomState or None
        Seed of the tree growing (an int makes ``fit`` reproducible).
    n_jobs : int or None
        Threads used to grow the trees.

    Attributes
    ----------
    classes_ : ndarray (n_classes,)
    n_features_in_ : int
    feature_names_in_ : ndarray of str (only when fitted on a frame with column names)
    temperature_ : float
        The calibration temperature (``< 1`` sharpens, ``> 1`` softens the forest's votes).
    oob_score_ : float
        Out-of-bag accuracy (NaN when no training row was left out of every tree).
    feature_importances_ : ndarray (n_features_in_,)
        Mean decrease in impurity.
    tree_feature_, tree_threshold_, tree_left_, tree_right_, tree_value_, tree_offsets_ : ndarray
        The forest as flat arrays (:mod:`backend_fab_kernels.tree_ensemble`).
    """

    def __init__(
        self,
        n_estimators: int = 150,
        *,
        max_features="sqrt",
        min_samples_leaf: int = 3,
        max_depth: int | None = None,
        extra_trees: bool = False,
        calibrate: bool = True,
        threshold: float | None = None,
        unknown_label="unknown",
        random_state=0,
        n_jobs: int | None = None,
    ):
        self.n_estimators = n_estimators
        self.max_features = max_features
        self.min_samples_leaf = min_samples_leaf
        self.max_depth = max_depth
        self.extra_trees = extra_trees
        self.calibrate = calibrate
        self.threshold = threshold
        self.unknown_label = unknown_label
        self.random_state = random_state
        self.n_jobs = n_jobs

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags

    # --- fitting -----------------------------------------------------------------------------

    def fit(self, X, y):
        """Grow the forest on ``X`` ``(n_samples, n_features)`` and labels ``y``; returns self."""
        from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

        if self.threshold is not None and not (0.0 <= float(self.threshold) <= 1.0):
            raise ValueError(f"threshold must lie in [0, 1] or be None, got {self.threshold!r}")
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        forest_cls = ExtraTreesClassifier if self.extra_trees else RandomForestClassifier
        forest = forest_cls(
            n_estimators=self.n_estimators,
            max_features=self.max_features,
            min_samples_leaf=self.min_samples_leaf,
            max_depth=self.max_depth,
            bootstrap=True,
            random_state=self.random_state,
            n_jobs=self.n_jobs,
        ).fit(X, y_enc)
        self._export(forest)
        q_oob, seen = self._oob_votes(forest, X)
        if seen.any():
            self.oob_score_ = float(np.mean(q_oob[seen].argmax(axis=1) == y_enc[seen]))
        else:
            self.oob_score_ = float("nan")
        enough = seen.sum() >= 20 and self.classes_.size > 1
        if self.calibrate and enough:
            self.temperature_ = _fit_temperature(q_oob[seen], y_enc[seen])
        else:
            self.temperature_ = 1.0
        self.feature_importances_ = np.asarray(forest.feature_importances_, dtype=np.float64)
        return self

    def _export(self, forest) -> None:
        n_classes = self.classes_.size
        feats, thrs, lefts, rights, values, offsets = [], [], [], [], [], [0]
        for est in forest.estimators_:
            tree = est.tree_
            base = offsets[-1]
            leaf = tree.children_left < 0
            feats.append(np.where(leaf, -1, tree.feature).astype(np.int32))
            thrs.append(np.where(leaf, 0.0, tree.threshold))
            lefts.append(np.where(leaf, -1, tree.children_left + base).astype(np.int32))
            rights.append(np.where(leaf, -1, tree.children_right + base).astype(np.int32))
            v = tree.value[:, 0, :].astype(np.float64)
            full = np.zeros((v.shape[0], n_classes))
            full[:, est.classes_.astype(np.int64)] = v
            full /= np.maximum(full.sum(axis=1, keepdims=True), 1e-300)
            values.append(full)
            offsets.append(base + tree.node_count)
        self.tree_feature_ = np.concatenate(feats)
        self.tree_threshold_ = np.concatenate(thrs)
        self.tree_left_ = np.concatenate(lefts)
        self.tree_right_ = np.concatenate(rights)
        self.tree_value_ = np.concatenate(values)
        self.tree_offsets_ = np.asarray(offsets, dtype=np.int64)

    def _oob_votes(self, forest, X):
        """Mean leaf distribution over the trees that did not see each row; rows seen by every
        tree are marked False in ``seen``."""
        n = X.shape[0]
        q = np.zeros((n, self.classes_.size))
        count = np.zeros(n)
        X32 = np.asarray(X, dtype=np.float32)
        for t, in_bag in enumerate(forest.estimators_samples_):
            oob = np.ones(n, dtype=bool)
            oob[in_bag] = False
            if not oob.any():
                continue
            leaves = forest.estimators_[t].apply(X32[oob]) + self.tree_offsets_[t]
            q[oob] += self.tree_value_[leaves]
            count[oob] += 1
        seen = count > 0
        q[seen] /= count[seen, None]
        return q, seen

    # --- prediction --------------------------------------------------------------------------

    def _raw_proba(self, X) -> np.ndarray:
        from backend_fab_kernels.tree_ensemble import forest_proba

        return forest_proba(
            X,
            self.tree_feature_,
            self.tree_threshold_,
            self.tree_left_,
            self.tree_right_,
            self.tree_value_,
            self.tree_offsets_,
        )

    def predict_proba(self, X) -> np.ndarray:
        """Calibrated class probabilities, ``(n_samples, n_classes)`` in the order of ``classes_``."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return _temper(self._raw_proba(X), self.temperature_)

    def predict(self, X) -> np.ndarray:
        """The most probable class, or ``unknown_label`` below ``threshold``."""
        proba = self.predict_proba(X)
        return self._labels(proba)

    def _labels(self, proba: np.ndarray) -> np.ndarray:
        best = proba.argmax(axis=1)
        labels = self.classes_[best]
        if self.threshold is None:
            return labels
        low = proba[np.arange(best.size), best] < float(self.threshold)
        if not low.any():
            return labels
        out = labels.astype(object)
        out[low] = self.unknown_label
        return out

    def explain(self, X, top: int = 3) -> tuple[np.ndarray, list[list[tuple[int, float]]]]:
        """Why each row got its class: the ``top`` features that raised its probability most.

        Returns ``(classes, [[(feature index, contribution), ...], ...])``: the best class of each
        row and, per row, the features with the largest positive contribution to that class's
        (uncalibrated) forest probability (:func:`backend_fab_kernels.tree_ensemble.
        forest_contributions`), largest first.
        """
        from backend_fab_kernels.tree_ensemble import forest_contributions

        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        best = self._raw_proba(X).argmax(axis=1)
        _, contrib = forest_contributions(
            X,
            self.tree_feature_,
            self.tree_threshold_,
            self.tree_left_,
            self.tree_right_,
            self.tree_value_,
            self.tree_offsets_,
            best,
        )
        k = max(0, min(int(top), contrib.shape[1]))
        order = np.argsort(-contrib, axis=1, kind="stable")[:, :k]
        rows = [
            [(int(j), float(contrib[i, j])) for j in order[i] if contrib[i, j] > 0]
            for i in range(contrib.shape[0])
        ]
        return self.classes_[best], rows

    # --- persistence (no pickle) -------------------------------------------------------------

    def save(self, path, *, info: dict | None = None) -> Path:
        """Write the fitted model to ``path`` (``.npz``: arrays plus a JSON header; no pickle)."""
        check_is_fitted(self)
        classes = np.asarray(self.classes_)
        if classes.dtype.kind not in "iub":
            classes = classes.astype(str)
        meta = {
            "format": MODEL_FORMAT,
            "version": _MODEL_VERSION,
            "params": _json_params(self.get_params()),
            "n_features_in": int(self.n_features_in_),
            "feature_names": (
                [str(n) for n in self.feature_names_in_]
                if hasattr(self, "feature_names_in_")
                else None
            ),
            "feature_set": feature_set_id(),
            "temperature": float(self.temperature_),
            "oob_score": None if math.isnan(self.oob_score_) else float(self.oob_score_),
            "info": info or {},
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(
            tmp,
            meta=np.array(json.dumps(meta, sort_keys=True)),
            classes=classes,
            feature=self.tree_feature_.astype(
                np.int16 if self.n_features_in_ < 32767 else np.int32
            ),
            threshold=self.tree_threshold_,
            left=self.tree_left_,
            right=self.tree_right_,
            value=self.tree_value_.astype(np.float32),
            tree_offsets=self.tree_offsets_,
            importances=self.feature_importances_,
        )
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path) -> WaferPatternClassifier:
        """Read a model written by :meth:`save`. Never unpickles; every array is checked.

        Raises :class:`~backend_fab.errors.PatternModelError` naming the file and the problem.
        """
        from backend_fab_kernels.tree_ensemble import check_forest

        path = Path(path)

        def bad(what: str) -> PatternModelError:
            return PatternModelError(f"pattern model {path}: {what}")

        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except FileNotFoundError:
            raise bad("no such file") from None
        except (OSError, ValueError, EOFError) as exc:
            raise bad(f"not a readable .npz model file ({exc})") from exc
        missing = sorted({"meta", *_ARRAYS} - set(arrays))
        if missing:
            raise bad(f"missing arrays {missing}")
        try:
            meta = json.loads(str(arrays["meta"]))
        except (json.JSONDecodeError, TypeError) as exc:
            raise bad(f"header is not JSON ({exc})") from exc
        if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
            raise bad(f"header format is not {MODEL_FORMAT!r}")
        if meta.get("version") != _MODEL_VERSION:
            raise bad(
                f"model version {meta.get('version')!r}; this backend-fab reads {_MODEL_VERSION}"
            )
        n_features = meta.get("n_features_in")
        if not isinstance(n_features, int) or n_features < 1:
            raise bad("n_features_in must be a positive integer")
        try:
            feat, thr, lft, rgt, val, off = check_forest(
                arrays["feature"],
                arrays["threshold"],
                arrays["left"],
                arrays["right"],
                arrays["value"],
                arrays["tree_offsets"],
                n_features=n_features,
            )
        except ValueError as exc:
            raise bad(f"inconsistent forest arrays: {exc}") from exc
        classes = arrays["classes"]
        if classes.ndim != 1 or classes.size != val.shape[1]:
            raise bad(f"{classes.size} classes for {val.shape[1]} value columns")
        if not np.isfinite(val).all() or not np.isfinite(thr).all():
            raise bad("non-finite thresholds or node values")
        temperature = meta.get("temperature")
        if not isinstance(temperature, int | float) or not (0 < temperature < 1e3):
            raise bad(f"temperature must be a positive number, got {temperature!r}")
        names = meta.get("feature_names")
        if names is not None and (not isinstance(names, list) or len(names) != n_features):
            raise bad("feature_names must list one name per feature")
        importances = arrays["importances"]
        if importances.shape != (n_features,):
            raise bad(f"importances shape {importances.shape}, expected ({n_features},)")
        params = meta.get("params")
        if not isinstance(params, dict):
            raise bad("params missing from the header")
        try:
            model = cls(**params)
        except TypeError as exc:
            raise bad(f"unknown parameters ({exc})") from exc
        model.classes_ = classes
        model.n_features_in_ = n_features
        if names is not None:
            model.feature_names_in_ = np.asarray(names, dtype=object)
        model.tree_feature_ = feat
        model.tree_threshold_ = thr
        model.tree_left_ = lft
        model.tree_right_ = rgt
        model.tree_value_ = val
        model.tree_offsets_ = off
        model.temperature_ = float(temperature)
        oob = meta.get("oob_score")
        model.oob_score_ = float("nan") if oob is None else float(oob)
        model.feature_importances_ = np.asarray(importances, dtype=np.float64)
        model.feature_set_ = meta.get("feature_set")
        model.info_ = meta.get("info") or {}
        return model


def _json_params(params: dict) -> dict:
    out = {}
    for key, value in params.items():
        if isinstance(value, np.generic):
            value = value.item()
        if value is not None and not isinstance(value, bool | int | float | str):
            raise PatternModelError(
                f"parameter {key}={value!r} cannot be saved in a model file (use plain values)"
            )
        out[key] = value
    return out


# --- the default model ---------------------------------------------------------------------------


def build_default_model(
    n_per_class: int | None = None, seed: int | None = None, *, n_jobs: int | None = None
) -> WaferPatternClassifier:
    """Train the default model on synthetic maps (:mod:`backend_fab.patterns.training`).

    Deterministic for the defaults in :data:`DEFAULT_TRAINING` and :data:`DEFAULT_PARAMS`.
    """
    import polars as pl

    from backend_fab.patterns.features import FEATURE_NAMES
    from backend_fab.patterns.training import generate_maps

    n = DEFAULT_TRAINING["n_per_class"] if n_per_class is None else int(n_per_class)
    s = DEFAULT_TRAINING["seed"] if seed is None else int(seed)
    maps = generate_maps(n, seed=s, lot_size=DEFAULT_TRAINING["lot_size"])
    X = pl.DataFrame(maps.features(), schema=list(FEATURE_NAMES), orient="row")
    model = WaferPatternClassifier(**DEFAULT_PARAMS, random_state=s, n_jobs=n_jobs)
    model.fit(X, maps.label)
    model.info_ = {
        "training": "backend_fab.patterns.training.generate_maps",
        "n_per_class": n,
        "seed": s,
        "lot_size": DEFAULT_TRAINING["lot_size"],
        "n_maps": int(maps.n_wafers),
    }
    return model


def _cache_dir() -> Path:
    if os.environ.get("BACKEND_FAB_CACHE"):
        return Path(os.environ["BACKEND_FAB_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "backend-fab"


@lru_cache(maxsize=1)
def default_model() -> WaferPatternClassifier:
    """The shipped model (``default_model.npz`` beside this module), loaded once per process.

    When the shipped file is missing or was trained on another feature set, the model is rebuilt
    (deterministically, a minute or so) and kept in the user cache
    (``$BACKEND_FAB_CACHE``, else ``$XDG_CACHE_HOME/backend-fab``, else ``~/.cache/backend-fab``)
    as a pickle-free ``.npz``.
    """
    fid = feature_set_id()
    if DEFAULT_MODEL_PATH.exists():
        model = WaferPatternClassifier.load(DEFAULT_MODEL_PATH)
        if model.feature_set_ == fid:
            return model
        log.warning(
            "shipped pattern model was trained on feature set %s, not %s: rebuilding",
            model.feature_set_,
            fid,
        )
    cached = _cache_dir() / f"pattern-model-{fid}.npz"
    if cached.exists():
        try:
            model = WaferPatternClassifier.load(cached)
            if model.feature_set_ == fid:
                return model
        except PatternModelError as exc:
            log.warning("ignoring unreadable cached pattern model: %s", exc)
    model = build_default_model()
    try:
        model.save(cached, info=getattr(model, "info_", {}))
    except OSError as exc:  # a read-only home still gets a working model
        log.warning("could not cache the pattern model at %s: %s", cached, exc)
    return WaferPatternClassifier.load(cached) if cached.exists() else model


def main(argv: list[str] | None = None) -> int:
    """``python -m backend_fab.patterns.model [PATH]``: rebuild the shipped default model."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else DEFAULT_MODEL_PATH
    model = build_default_model()
    model.save(path, info=model.info_)
    print(
        f"wrote {path} ({path.stat().st_size} bytes), oob accuracy {model.oob_score_:.3f}, "
        f"temperature {model.temperature_:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
