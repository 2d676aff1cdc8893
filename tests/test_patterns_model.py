"""WaferPatternClassifier: scikit-learn conventions, calibration, unknown answers, pickle-free files."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from pattern_helpers import small_features, small_maps, small_model
from sklearn.utils.estimator_checks import parametrize_with_checks

from backend_fab.errors import PatternModelError
from backend_fab.patterns import WaferPatternClassifier


@parametrize_with_checks([WaferPatternClassifier(n_estimators=8)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_init_holds_no_logic_and_params_round_trip():
    clf = WaferPatternClassifier(n_estimators=5, threshold=0.7, unknown_label="?")
    assert clf.get_params()["threshold"] == 0.7
    assert not any(k.endswith("_") for k in vars(clf))


def test_calibrated_probabilities_and_oob():
    clf = small_model()
    proba = clf.predict_proba(
        pl.DataFrame(small_features(), schema=list(clf.feature_names_in_), orient="row")
    )
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert 0.05 < clf.temperature_ < 5.0
    assert 0.5 < clf.oob_score_ <= 1.0  # a 9-class problem: chance is 0.11


def test_temperature_is_fitted_to_out_of_bag_votes():
    """The fitted temperature gives a lower out-of-bag log loss than no calibration at all."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5))
    y = (X[:, 0] + 0.8 * rng.normal(size=400) > 0).astype(int)
    cal = WaferPatternClassifier(n_estimators=60, random_state=0).fit(X, y)
    raw = WaferPatternClassifier(n_estimators=60, random_state=0, calibrate=False).fit(X, y)
    assert raw.temperature_ == 1.0 and cal.temperature_ != 1.0
    Xt = rng.normal(size=(2000, 5))
    yt = (Xt[:, 0] + 0.8 * rng.normal(size=2000) > 0).astype(int)

    def log_loss(clf):
        p = clf.predict_proba(Xt)[np.arange(yt.size), yt]
        return float(-np.mean(np.log(p)))

    assert log_loss(cal) < log_loss(raw)


def test_unknown_below_threshold():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 3))
    y = np.where(X[:, 0] + rng.normal(size=400) > 0, "a", "b")  # noisy near x0 = 0
    clf = WaferPatternClassifier(n_estimators=30, threshold=0.9, unknown_label="unknown").fit(X, y)
    X = rng.normal(size=(400, 3))
    proba = clf.predict_proba(X)
    pred = clf.predict(X)
    low = proba.max(axis=1) < 0.9
    assert low.any() and (~low).any()
    assert set(pred[low]) == {"unknown"}
    np.testing.assert_array_equal(pred[~low], clf.classes_[proba[~low].argmax(axis=1)])
    none = clf.set_params(threshold=None).predict(X)
    assert "unknown" not in set(none)
    with pytest.raises(ValueError, match="threshold"):
        WaferPatternClassifier(threshold=1.5).fit(X, y)


def test_explain_names_the_features_that_raised_the_class():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(400, 4))
    y = np.where(X[:, 2] > 0.3, "hi", "lo")  # only feature 2 matters
    clf = WaferPatternClassifier(n_estimators=40, random_state=0).fit(X, y)
    classes, rows = clf.explain(X[:50], top=2)
    np.testing.assert_array_equal(classes, clf.predict(X[:50]))
    firsts = [row[0][0] for row in rows if row]
    assert len(firsts) >= 45 and np.mean(np.array(firsts) == 2) > 0.9
    assert all(c > 0 for row in rows for _, c in row)


def test_save_load_round_trip_without_pickle(tmp_path):
    clf = small_model()
    path = clf.save(tmp_path / "m.npz", info={"note": "test"})
    with np.load(path, allow_pickle=False) as npz:  # readable without pickle
        meta = json.loads(str(npz["meta"]))
        assert all(npz[k].dtype != object for k in npz.files)
    assert meta["format"] == "backend-fab/wafer-pattern-model"
    back = WaferPatternClassifier.load(path)
    X = pl.DataFrame(small_features(), schema=list(clf.feature_names_in_), orient="row")
    np.testing.assert_allclose(back.predict_proba(X), clf.predict_proba(X), atol=1e-6)
    np.testing.assert_array_equal(back.predict(X), clf.predict(X))
    assert back.info_ == {"note": "test"}
    assert back.get_params() == clf.get_params()


def test_integer_labels_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(120, 3))
    y = (X[:, 1] > 0).astype(np.int64) + 3
    clf = WaferPatternClassifier(n_estimators=10).fit(X, y)
    back = WaferPatternClassifier.load(clf.save(tmp_path / "int.npz"))
    assert back.classes_.dtype.kind == "i"
    np.testing.assert_array_equal(back.predict(X), clf.predict(X))


def test_load_refuses_pickles_and_broken_files(tmp_path):
    evil = tmp_path / "evil.npz"
    np.savez(evil, meta=np.array([{"format": "x"}], dtype=object))
    with pytest.raises(PatternModelError, match=r"evil\.npz"):
        WaferPatternClassifier.load(evil)
    with pytest.raises(PatternModelError, match="no such file"):
        WaferPatternClassifier.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(PatternModelError, match="readable"):
        WaferPatternClassifier.load(tmp_path / "junk.npz")
    # a child index pointing outside its tree must be refused before any kernel reads it
    good = small_model().save(tmp_path / "good.npz")
    with np.load(good, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["left"] = arrays["left"].copy()
    arrays["left"][0] = arrays["left"].size + 5
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(PatternModelError, match="inconsistent forest"):
        WaferPatternClassifier.load(tmp_path / "bad.npz")
    meta = json.loads(str(arrays["meta"]))
    meta["version"] = 99
    np.savez(tmp_path / "v99.npz", **{**arrays, "meta": np.array(json.dumps(meta))})
    with pytest.raises(PatternModelError, match="version"):
        WaferPatternClassifier.load(tmp_path / "v99.npz")


def test_default_model_ships_as_npz_and_is_current():
    from backend_fab.patterns.model import DEFAULT_MODEL_PATH, default_model, feature_set_id

    assert DEFAULT_MODEL_PATH.is_file(), "the shipped model file is missing"
    model = default_model()
    assert model.feature_set_ == feature_set_id()
    assert list(model.classes_) == sorted(
        [
            "none",
            "Center",
            "Donut",
            "Edge-Loc",
            "Edge-Ring",
            "Loc",
            "Scratch",
            "Random",
            "Near-full",
        ]
    )
    assert DEFAULT_MODEL_PATH.stat().st_size < 8 * 2**20


def test_small_training_set_is_lot_grouped_and_balanced():
    maps = small_maps()
    labels, counts = np.unique(maps.label, return_counts=True)
    assert labels.size == 9 and set(counts) == {40}
    lots = pl.DataFrame({"lot": maps.lot_id}).group_by("lot").len()
    assert lots["len"].max() == 20


def test_default_model_is_rebuilt_into_the_cache_when_the_shipped_file_is_missing(
    tmp_path, monkeypatch
):
    import backend_fab.patterns.model as m

    calls = []

    def small_build():
        calls.append(1)
        return small_model()

    monkeypatch.setattr(m, "DEFAULT_MODEL_PATH", tmp_path / "absent.npz")
    monkeypatch.setattr(m, "build_default_model", small_build)
    monkeypatch.setenv("BACKEND_FAB_CACHE", str(tmp_path / "cache"))
    m.default_model.cache_clear()
    try:
        first = m.default_model()
        cached = tmp_path / "cache" / f"pattern-model-{m.feature_set_id()}.npz"
        assert cached.is_file() and calls == [1]
        assert first.feature_set_ == m.feature_set_id()
        m.default_model.cache_clear()
        again = m.default_model()  # served from the cache: no second build
        assert calls == [1]
        np.testing.assert_array_equal(again.tree_threshold_, first.tree_threshold_)
    finally:
        m.default_model.cache_clear()
