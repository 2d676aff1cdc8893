"""Table adapters: GDBN / Z-PAT / inking / NNR screens (backend_fab.kernels.screens) and clusters,
statistics, stacked maps and yield models (backend_fab.spatial) agree with the kernels and with
planted truths."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import backend_fab.frame  # noqa: F401  (registers the fab namespace)
from backend_fab.kernels.screens import cluster_ink_flags, gdbn_flags, nnr_table, zpat_flags
from backend_fab.layout import Layout
from backend_fab.spatial import (
    CLUSTER_COLUMNS,
    cluster_labels,
    cluster_table,
    compare_yield_models,
    fit_yield_model,
    reticle_fail_rate,
    stacked_fail_rate,
    wafer_spatial_stats,
    window_method,
)
from backend_fab.wafer import lot_grid

LAYOUT = Layout(
    "P1",
    wafer_size_mm=60.0,
    die_width_mm=2.0,
    die_height_mm=2.0,
    edge_exclusion_mm=1.0,
    reticle_cols=3,
    reticle_rows=2,
)


def _lot(rng, lot="L1", n_wafers=3, p=0.08, blob=None, reticle=None) -> pl.DataFrame:
    """A lot on LAYOUT: random fails, optionally a blob (cx, cy, r) and a bad reticle position."""
    x, y = LAYOUT.gross_die()
    rx, ry = LAYOUT.reticle_xy(x, y)
    frames = []
    for w in range(n_wafers):
        fail = rng.random(x.size) < p
        if blob is not None:
            cx, cy, r = blob
            fail |= (x - cx) ** 2 + (y - cy) ** 2 <= r * r
        if reticle is not None:
            fail |= (rx == reticle[0]) & (ry == reticle[1]) & (rng.random(x.size) < 0.7)
        frames.append(
            pl.DataFrame(
                {
                    "lot_id": lot,
                    "wafer_id": f"{w + 1:02d}",
                    "part_seq": np.arange(x.size, dtype=np.int64),
                    "x": x,
                    "y": y,
                    "hbin": np.where(fail, 5, 1).astype(np.int32),
                    "final": True,
                }
            )
        )
    return pl.concat(frames)


@pytest.fixture(scope="module")
def die():
    rng = np.random.default_rng(7)
    return pl.concat(
        [_lot(rng, "L1", blob=(4, -3, 3.5)), _lot(rng, "L2", n_wafers=2, reticle=(1, 0))]
    )


def test_gdbn_flags_match_the_kernel(die):
    from backend_fab_kernels.gdbn import gdbn

    # a retest row that is not final: left off the grid, null results
    extra = die.head(1).with_columns(
        pl.lit(False).alias("final"), pl.lit(1).cast(pl.Int32).alias("hbin")
    )
    lf = gdbn_flags(pl.concat([die, extra]).lazy(), algorithm="weighting", layout=LAYOUT)
    assert isinstance(lf, pl.LazyFrame)
    out = lf.collect()
    assert out.height == die.height + 1
    assert out.filter(~pl.col("final")).select(pl.col("gdbn_flag").is_null().all()).item()
    for lot in ("L1", "L2"):
        part = out.filter((pl.col("lot_id") == lot) & pl.col("final"))
        g = lot_grid(part, layout=LAYOUT)
        flags, score = gdbn(g.grid, "weighting", return_score=True)
        w = part.get_column("wafer_id").cast(pl.Int64).to_numpy() - 1
        iy = part.get_column("y").to_numpy() - g.y0
        ix = part.get_column("x").to_numpy() - g.x0
        np.testing.assert_array_equal(
            part.get_column("gdbn_flag").to_numpy(), flags[w, iy, ix].astype(bool)
        )
        s = part.get_column("gdbn_score").to_numpy().astype(float)
        np.testing.assert_array_equal(
            np.nan_to_num(s, nan=-1), np.nan_to_num(score[w, iy, ix], nan=-1)
        )
    assert out.get_column("gdbn_flag").sum() > 0


def test_gdbn_ring_mask_and_namespace(die):
    outer = gdbn_flags(die.lazy(), rings=("outer", 2), layout=LAYOUT).collect()
    flagged = outer.filter(pl.col("gdbn_flag")).select("x", "y")
    rings = LAYOUT.ring_index(
        flagged.get_column("x").to_numpy(), flagged.get_column("y").to_numpy()
    )
    assert (rings < 2).all()
    via_ns = die.fab.gdbn_flags(layout=LAYOUT)
    assert isinstance(via_ns, pl.DataFrame) and "gdbn_flag" in via_ns.columns


def test_zpat_and_stacked_map_find_the_blob(die):
    out = zpat_flags(die.lazy(), threshold_pct=100.0).collect()
    l1 = out.filter(pl.col("lot_id") == "L1")
    in_blob = ((l1.get_column("x") - 4) ** 2 + (l1.get_column("y") + 3) ** 2 <= 3.5**2).to_numpy()
    assert l1.get_column("zpat_flag").to_numpy()[in_blob].all()
    assert l1.get_column("zpat_flag").to_numpy()[~in_blob].mean() < 0.01
    assert (l1.get_column("zpat_fail_count").to_numpy()[in_blob] == 3).all()
    binom = zpat_flags(die.lazy(), alpha=0.05, method="bh").collect()
    assert (
        binom.filter(pl.col("lot_id") == "L1").get_column("zpat_flag").to_numpy()[in_blob].mean()
        > 0.9
    )
    stack = stacked_fail_rate(die.lazy(), layout=LAYOUT).collect()
    hot = stack.filter(pl.col("hot") & (pl.col("lot_id") == "L1"))
    assert (
        hot.height > 0
        and ((hot.get_column("x") - 4) ** 2 + (hot.get_column("y") + 3) ** 2 <= 3.5**2).all()
    )
    with pytest.raises(ValueError, match="threshold_pct"):
        zpat_flags(die.lazy())


def test_reticle_fail_rate_finds_the_planted_position(die):
    ret = reticle_fail_rate(die.lazy(), LAYOUT).collect()
    assert set(ret.columns) >= {"reticle_x", "reticle_y", "fail_rate", "hot"}
    hot = ret.filter(pl.col("hot"))
    assert hot.select("lot_id", "reticle_x", "reticle_y").rows() == [("L2", 1, 0)]
    assert ret.filter(pl.col("lot_id") == "L1").get_column("n_tested").sum() == 3 * LAYOUT.n_gross


def test_cluster_ink_flags(die):
    out = cluster_ink_flags(die.lazy(), min_size=20, rings=1).collect()
    inked = out.filter(pl.col("cluster_ink"))
    assert inked.height > 0 and (inked.get_column("hbin") == 1).all()
    d = np.hypot(inked.get_column("x").to_numpy() - 4, inked.get_column("y").to_numpy() + 3)
    assert (d <= 3.5 + 2.9).all()


def test_cluster_table_and_labels(die):
    from backend_fab_kernels.components import label_components

    tab = cluster_table(die.lazy(), layout=LAYOUT, min_size=5).collect()
    assert tab.columns == ["lot_id", "wafer_id", "cluster", *CLUSTER_COLUMNS]
    assert dict(tab.schema)["touches_edge"] == pl.Boolean
    blob = (
        tab.filter(pl.col("lot_id") == "L1")
        .sort("size", descending=True)
        .group_by("wafer_id")
        .first()
    )
    assert blob.height == 3
    assert (np.abs(blob.get_column("centroid_x").to_numpy() - 4) < 1.0).all()
    assert (np.abs(blob.get_column("centroid_y").to_numpy() + 3) < 1.0).all()
    assert (blob.get_column("linearity").to_numpy() < 0.3).all()
    lab = cluster_labels(die.lazy()).collect()
    part = lab.filter((pl.col("lot_id") == "L1") & (pl.col("wafer_id") == "01"))
    g = lot_grid(part)
    ref, _ = label_components(g.grid, 8)
    np.testing.assert_array_equal(
        part.get_column("cluster").to_numpy(),
        ref[0, part.get_column("y").to_numpy() - g.y0, part.get_column("x").to_numpy() - g.x0],
    )
    db = cluster_table(die.lazy(), method="dbscan", eps=1.5, min_samples=4).collect()
    assert db.height > 0 and db.get_column("size").min() >= 1


def test_dbscan_labels_match_sklearn_through_the_table(die):
    from sklearn.cluster import DBSCAN

    part = die.filter((pl.col("lot_id") == "L1") & (pl.col("wafer_id") == "02"))
    lab = cluster_labels(part.lazy(), method="dbscan", eps=2.0, min_samples=5).collect()
    fails = lab.filter(pl.col("hbin") != 1).sort("y", "x")
    sk = DBSCAN(eps=2.0, min_samples=5).fit(fails.select("x", "y").to_numpy()).labels_
    np.testing.assert_array_equal(
        fails.get_column("cluster").to_numpy(), np.where(sk >= 0, sk + 1, -1)
    )


def test_wafer_spatial_stats(die):
    stats = wafer_spatial_stats(die.lazy(), n_perm=199, layout=LAYOUT).collect()
    assert stats.height == 5
    l1 = stats.filter(pl.col("lot_id") == "L1")
    assert (l1.get_column("bb_z") > 5).all() and l1.get_column("clustered").all()
    assert (l1.get_column("largest_cluster") >= 37).all()
    assert (l1.get_column("morans_z") > 3).all()
    assert (l1.get_column("n_die") == LAYOUT.n_gross).all()
    by_order = wafer_spatial_stats(die.lazy(), n_perm=0, order="part_seq").collect()
    assert by_order.get_column("bb_p_perm").is_null().all()
    assert by_order.get_column("runs").null_count() == 0


def test_window_method_recovers_a_poisson_wafer():
    rng = np.random.default_rng(3)
    x, y = LAYOUT.gross_die()
    rows = []
    lam = 0.1
    for w in range(20):
        fail = rng.poisson(lam, x.size) > 0
        rows.append(
            pl.DataFrame(
                {
                    "lot_id": "L",
                    "wafer_id": str(w),
                    "x": x,
                    "y": y,
                    "hbin": np.where(fail, 2, 1).astype(np.int32),
                }
            )
        )
    out = window_method(pl.concat(rows).lazy(), die_area_cm2=0.04).collect()
    assert out.height == 1
    r = out.row(0, named=True)
    assert r["y0"] > 0.95 and r["lambda"] == pytest.approx(lam, rel=0.2)
    assert r["alpha"] > 3  # no clustering
    assert r["d0_per_cm2"] == pytest.approx(r["lambda"] / 0.04)


def test_fit_yield_models_recover_planted_parameters():
    areas = np.array([0.1, 0.2, 0.4, 0.8, 1.6] * 4)
    n = np.full(areas.size, 20000)
    d0, alpha = 1.5, 0.8
    from backend_fab_kernels.yield_models import negative_binomial_yield

    good = np.round(n * negative_binomial_yield(areas * d0, alpha))
    fit = fit_yield_model(areas, good, n, "negative_binomial")
    assert fit["d0_per_cm2"] == pytest.approx(d0, rel=0.02)
    assert fit["alpha"] == pytest.approx(alpha, rel=0.05)
    table = compare_yield_models(areas, good, n)
    assert table.get_column("model")[0] == "negative_binomial"
    assert set(table.get_column("model")) == {"poisson", "murphy", "seeds", "negative_binomial"}
    p = fit_yield_model(areas, np.round(n * np.exp(-areas * 0.5)), n, "poisson")
    assert p["d0_per_cm2"] == pytest.approx(0.5, rel=0.01)
    with pytest.raises(ValueError, match="model"):
        fit_yield_model(areas, good, n, "gamma")


def test_nnr_table_matches_the_kernel():
    from backend_fab_kernels.nnr import nnr_residuals

    rng = np.random.default_rng(11)
    x, y = LAYOUT.gross_die()
    frames = []
    for w in range(2):
        for t in (100, 200):
            v = 0.05 * x + rng.normal(0, 0.01, x.size) + t
            frames.append(
                pl.DataFrame(
                    {"lot_id": "L", "wafer_id": str(w), "x": x, "y": y, "test_num": t, "value": v}
                )
            )
    res = pl.concat(frames)
    out = nnr_table(res.lazy()).collect()
    part = out.filter((pl.col("wafer_id") == "1") & (pl.col("test_num") == 200))
    g = lot_grid(part.rename({"value": "v"}), kind="value", value="v")
    ref = nnr_residuals(g.grid)[
        0, part.get_column("y").to_numpy() - g.y0, part.get_column("x").to_numpy() - g.x0
    ]
    np.testing.assert_array_equal(part.get_column("nnr_residual").to_numpy(), ref)
    assert part.get_column("nnr_residual").abs().max() < 0.1
    np.testing.assert_allclose(
        part.get_column("nnr_estimate") + part.get_column("nnr_residual"), part.get_column("value")
    )
