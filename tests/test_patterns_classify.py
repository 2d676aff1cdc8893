"""classify_wafers / pattern_features: die tables in, one row per wafer out."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from pattern_helpers import disc_layout, small_maps, small_model

from backend_fab.errors import SchemaError
from backend_fab.patterns import FEATURE_NAMES, classify_wafers, pattern_features
from backend_fab.synth.patterns import draw_signature


def _die_frame(maps_slice: int = 30) -> pl.DataFrame:
    df = small_maps().die_frame()
    keep = small_maps().truth_frame().head(maps_slice).select("lot_id", "wafer_id")
    return df.join(keep, on=["lot_id", "wafer_id"], how="semi")


def test_pattern_features_is_lazy_and_matches_the_kernel():
    die = _die_frame()
    lf = pattern_features(die.lazy())
    assert isinstance(lf, pl.LazyFrame)
    schema = lf.collect_schema()
    assert list(schema)[:4] == ["lot_id", "wafer_id", "n_die", "n_fail"]
    assert list(schema)[4:] == list(FEATURE_NAMES)
    got = lf.collect()
    maps = small_maps()
    want = maps.features()[:30]
    truth = maps.truth_frame().head(30).with_row_index("i")
    order = got.join(truth, on=["lot_id", "wafer_id"]).get_column("i").to_numpy()
    np.testing.assert_array_equal(got.select(FEATURE_NAMES).to_numpy(), want[order])


def test_features_do_not_depend_on_die_order():
    die = _die_frame(12)
    shuffled = die.sample(fraction=1.0, shuffle=True, seed=3)
    a = pattern_features(die).collect().sort("lot_id", "wafer_id")
    b = pattern_features(shuffled).collect().sort("lot_id", "wafer_id")
    assert a.equals(b)


def test_fail_from_hbin_fail_column_or_passed_and_pass_bins():
    die = _die_frame(6)
    by_bin = pattern_features(die.drop("fail")).collect()
    by_fail = pattern_features(die.drop("hbin")).collect()
    by_passed = pattern_features(
        die.select("lot_id", "wafer_id", "x", "y", (~pl.col("fail")).alias("passed"))
    ).collect()
    assert by_bin.equals(by_fail) and by_bin.equals(by_passed)
    # bin 2 counted as passing: every die passes
    all_pass = pattern_features(die.drop("fail"), pass_bins={1, 2}).collect()
    assert (all_pass["n_fail"] == 0).all()


def test_final_rows_only_and_duplicates():
    die = _die_frame(3).with_columns(pl.lit(True).alias("final"))
    retest = die.head(5).with_columns(pl.lit(False).alias("final"), pl.lit(7).alias("hbin"))
    both = pl.concat([die, retest])
    assert (
        pattern_features(both.drop("fail"))
        .collect()
        .equals(pattern_features(die.drop("fail")).collect())
    )
    dup = pl.concat([die, die.head(1)]).drop("final")
    with pytest.raises(SchemaError, match="more than once"):
        pattern_features(dup).collect()
    last = pattern_features(dup, duplicates="last").collect()
    assert last.height == 3


def test_bad_die_tables_raise_naming_the_column():
    die = _die_frame(2)
    with pytest.raises(SchemaError, match="missing column"):
        pattern_features(die.drop("x"))
    with pytest.raises(SchemaError, match="'fail'"):
        pattern_features(die.drop("hbin", "fail"))
    with pytest.raises(SchemaError, match="must hold integer"):
        pattern_features(die.with_columns(pl.col("x").cast(pl.Float64)))
    with pytest.raises(SchemaError, match="null 'y'"):
        pattern_features(
            die.with_columns(
                pl.when(pl.int_range(pl.len()) == 3).then(None).otherwise(pl.col("y")).alias("y")
            )
        ).collect()


def test_classify_wafers_returns_a_lazy_frame_with_classes():
    die = _die_frame(30)
    out = classify_wafers(die.lazy(), model=small_model(), threshold=None)
    assert isinstance(out, pl.LazyFrame)
    df = out.collect()
    assert df.height == 30
    assert df.schema["top_features"] == pl.List(pl.String)
    assert set(df["pattern_class"]) <= set(small_model().classes_)
    assert ((df["probability"] > 0) & (df["probability"] <= 1)).all()
    assert (df["probability"] >= df["runner_up_probability"]).all()
    assert set(df.explode("top_features")["top_features"].drop_nulls()) <= set(FEATURE_NAMES)
    truth = small_maps().truth_frame()
    joined = df.join(truth, on=["lot_id", "wafer_id"], suffix="_true")
    # the model saw these maps: it must get nearly all of them
    assert (joined["pattern_class"] == joined["pattern_class_true"]).mean() > 0.8


def test_unknown_threshold_in_the_pipeline():
    die = _die_frame(30)
    sure = classify_wafers(die, model=small_model(), threshold=None).collect()
    cut = float(np.median(sure["probability"]))
    out = classify_wafers(die, model=small_model(), threshold=cut).collect()
    low = out["probability"] < cut
    assert low.any()
    assert (out.filter(low)["pattern_class"] == "unknown").all()
    assert (out.filter(~low)["pattern_class"] == sure.filter(~low)["pattern_class"]).all()
    with pytest.raises(ValueError, match="threshold"):
        classify_wafers(die, model=small_model(), threshold=2.0)


def test_fab_namespace_alias():
    import backend_fab.frame  # noqa: F401  (registers the namespace)

    die = _die_frame(4)
    got = die.fab.classify_wafers(model=small_model(), threshold=None)
    assert isinstance(got, pl.DataFrame) and got.height == 4
    feats = die.lazy().fab.pattern_features()
    assert isinstance(feats, pl.LazyFrame)


def _edge_ring_map(n: int = 40, seed: int = 11):
    x, y = disc_layout(n)
    u = (x - (n - 1) / 2.0) / (n / 2.0)
    v = (y - (n - 1) / 2.0) / (n / 2.0)
    rng = np.random.default_rng(seed)
    prob, _ = draw_signature(
        "Edge-Ring", u, v, rng, width=0.08, coverage=1.0, density=0.9, background=0.03
    )
    return x, y, rng.random(x.size) < prob


def test_rotated_edge_ring_keeps_its_class():
    """The shipped model calls an Edge-Ring map Edge-Ring at 0, 90, 180 and 270 degrees (and
    mirrored), with rotation-invariant features unchanged by the quarter turns."""
    x, y, fail = _edge_ring_map()
    c = (x.max() + x.min()) / 2.0
    frames = []
    for k in range(4):
        xr, yr = x - c, y - c
        for _ in range(k):
            xr, yr = -yr, xr
        frames.append(
            pl.DataFrame(
                {
                    "lot_id": "L",
                    "wafer_id": f"rot{90 * k}",
                    "x": (xr + c).astype(np.int32),
                    "y": (yr + c).astype(np.int32),
                    "fail": fail,
                }
            )
        )
    frames.append(
        pl.DataFrame(
            {"lot_id": "L", "wafer_id": "mirror", "x": (-x).astype(np.int32), "y": y, "fail": fail}
        )
    )
    die = pl.concat(frames)
    out = classify_wafers(die, threshold=None).collect()
    assert out.height == 5
    assert (out["pattern_class"] == "Edge-Ring").all(), out
    feats = pattern_features(die).collect()
    invariant = [
        n for n in FEATURE_NAMES if n.startswith(("radial_", "fail_fraction", "geom_area"))
    ]
    first = feats.filter(pl.col("wafer_id") == "rot0").select(invariant)
    for wid in ("rot90", "rot180", "rot270", "mirror"):
        assert feats.filter(pl.col("wafer_id") == wid).select(invariant).equals(first), wid


def test_empty_die_table_gives_no_rows():
    empty = _die_frame(1).clear()
    assert classify_wafers(empty, model=small_model()).collect().height == 0
    assert pattern_features(empty).collect().height == 0
