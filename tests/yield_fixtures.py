"""Builders shared by the yield, bins, limits, PAT and plot tests.

* :func:`die_frame` turns plain rows into a canonical ``die`` table;
* :func:`toy_lot` draws a small lot (round wafers, sites, bins, optional parametric values) from
  a numpy Generator, with planted effects under the caller's control;
* :func:`ci_lake` generates the synthetic ``ci`` scenario into a lake once per session;
* :func:`ci_pat` runs the default PAT recipe on it once per session.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

from backend_fab import schema


def die_frame(rows: list[dict]) -> pl.DataFrame:
    """A canonical die table from dict rows (missing columns null; passed from hbin == 1)."""
    full = []
    for i, r in enumerate(rows):
        r = dict(r)
        r.setdefault("run_id", "r1")
        r.setdefault("part_seq", i)
        r.setdefault("product", "P")
        r.setdefault("lot_id", "L1")
        r.setdefault("wafer_id", "W1")
        r.setdefault("sbin", r.get("hbin"))
        r.setdefault("passed", r.get("hbin") == 1)
        r.setdefault("final", True)
        r.setdefault("retest_index", 0)
        full.append(r)
    return schema.conform("die", pl.DataFrame(full))


def round_wafer(radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Die coordinates of a round wafer of ``radius`` die (centre die (0, 0))."""
    xs, ys = np.meshgrid(np.arange(-radius, radius + 1), np.arange(-radius, radius + 1))
    keep = xs**2 + ys**2 <= radius**2
    return xs[keep].astype(np.int32), ys[keep].astype(np.int32)


def toy_lot(
    rng: np.random.Generator,
    *,
    lot_id: str = "L1",
    product: str = "P",
    n_wafers: int = 5,
    radius: int = 20,
    fail_rate: float = 0.05,
    edge_fail: float = 0.0,
    bad_site: int | None = None,
    bad_site_extra: float = 0.0,
    site_map=None,
    tests: int = 0,
    outliers: int = 0,
    outlier_sigma: float = 9.0,
    gradient: float = 0.0,
    run_prefix: str = "",
) -> dict[str, pl.DataFrame]:
    """A small lot: die (hbin 1 pass, 5 random fail, 7 edge fail, 9 bad-site fail) and, with
    ``tests``, results of that many Gaussian tests (test_num 100..) with a radial gradient of
    ``gradient`` sigmas and ``outliers`` planted outliers per wafer on good die (``truth``
    frame: lot_id, wafer_id, x, y, test_num). ``site_map(x, y) -> site`` defaults to a 2x2
    touchdown (x parity + 2 * y parity). Each wafer is its own run."""
    xs, ys = round_wafer(radius)
    n = xs.size
    r = np.hypot(xs, ys) / radius
    if site_map is None:
        site = (np.mod(xs, 2) + 2 * np.mod(ys, 2)).astype(np.int16)
    else:
        site = np.asarray(site_map(xs, ys), dtype=np.int16)
    die_parts, res_parts, truth = [], [], []
    for w in range(n_wafers):
        wafer_id = f"{w + 1:02d}"
        run_id = f"{run_prefix}{lot_id}-{wafer_id}"
        hbin = np.ones(n, dtype=np.int32)
        hbin[rng.random(n) < fail_rate] = 5
        if edge_fail:
            hbin[(r > 0.85) & (rng.random(n) < edge_fail)] = 7
        if bad_site is not None:
            hbin[(site == bad_site) & (rng.random(n) < bad_site_extra) & (hbin == 1)] = 9
        die_parts.append(
            pl.DataFrame(
                {
                    "run_id": run_id,
                    "part_seq": np.arange(n, dtype=np.int64),
                    "product": product,
                    "lot_id": lot_id,
                    "wafer_id": wafer_id,
                    "site": site,
                    "x": xs,
                    "y": ys,
                    "hbin": hbin,
                    "sbin": hbin * 10,
                    "passed": hbin == 1,
                    "final": True,
                    "retest_index": np.zeros(n, dtype=np.int16),
                }
            )
        )
        if tests:
            vals = rng.normal(0.0, 1.0, (n, tests)) + gradient * (r**2)[:, None]
            good = np.flatnonzero(hbin == 1)
            picks = rng.choice(good, size=min(outliers, good.size), replace=False)
            for k, i in enumerate(picks):
                t = k % tests
                vals[i, t] += outlier_sigma * (1 if k % 2 == 0 else -1)
                truth.append(
                    {
                        "lot_id": lot_id,
                        "wafer_id": wafer_id,
                        "x": int(xs[i]),
                        "y": int(ys[i]),
                        "test_num": 100 + t,
                    }
                )
            res_parts.append(
                pl.DataFrame(
                    {
                        "run_id": run_id,
                        "part_seq": np.repeat(np.arange(n, dtype=np.int64), tests),
                        "test_num": np.tile(np.arange(100, 100 + tests, dtype=np.int64), n),
                        "pin": np.full(n * tests, -1, dtype=np.int32),
                        "kind": "P",
                        "product": product,
                        "lot_id": lot_id,
                        "value": vals.ravel(),
                        "passed": True,
                    }
                )
            )
    out = {"die": schema.conform("die", pl.concat(die_parts))}
    if tests:
        out["results"] = schema.conform("results", pl.concat(res_parts))
        out["truth"] = pl.DataFrame(
            truth,
            schema={
                "lot_id": pl.String,
                "wafer_id": pl.String,
                "x": pl.Int32,
                "y": pl.Int32,
                "test_num": pl.Int64,
            },
        )
    return out


@functools.cache
def _ci_lake_path() -> Path:
    from backend_fab.lake import Lake
    from backend_fab.synth import generate_fab

    given = os.environ.get("BACKEND_FAB_TEST_TMP")
    root = Path(given) if given else Path(tempfile.mkdtemp(prefix="bf-ci-"))
    if not given:
        atexit.register(shutil.rmtree, root, True)
    path = root / "ci-lake"
    lake = Lake(path)
    generate_fab("ci").write_lake(lake)
    return path


def ci_lake():
    """The ``ci`` scenario in a lake (generated once per test session)."""
    from backend_fab.lake import Lake

    return Lake(_ci_lake_path())


@functools.cache
def ci_pat():
    """The default recipe run on the ``ci`` lake (once per session)."""
    from backend_fab.pat import run_pat

    return run_pat(ci_lake())


def ws_die(lake) -> pl.LazyFrame:
    """The wafer-sort die of a lake (runs of insertion WS*)."""
    ws = (
        lake.scan("runs")
        .filter(pl.col("insertion").str.starts_with("WS"))
        .select("run_id")
        .collect()["run_id"]
        .to_list()
    )
    return lake.scan("die").filter(pl.col("run_id").is_in(ws))


def figure_dir() -> Path:
    """Where tests save their figures: $BACKEND_FAB_FIGURES, else <tmp>/backend-fab-figures
    (overwritten by each run, kept afterwards for a look)."""
    given = os.environ.get("BACKEND_FAB_FIGURES")
    path = Path(given) if given else Path(tempfile.gettempdir()) / "backend-fab-figures"
    path.mkdir(parents=True, exist_ok=True)
    return path
