"""Benchmark of the PAT engine: the default recipe on one big lot, stage by stage.

    .venv/bin/python benchmarks/bench_pat.py            # 25 wafers x ~100k die x 20 tests
    .venv/bin/python benchmarks/bench_pat.py --smoke    # 3 wafers x ~2k die x 4 tests, seconds
    .venv/bin/python benchmarks/bench_pat.py --json out.json

Input, generated in memory (no lake I/O in the timings): one lot of ``--wafers`` round wafers of
``--radius`` die (radius 178: 99,565 die per wafer), 5 % failing die, ``--tests`` Gaussian
parametric tests with a radial gradient and 0.02 % planted 9-sigma outliers; two of the tests
are named ``IDDQ_PreStrs`` / ``IDDQ_PostStrs`` so that the IDDQ-delta rule has a pair. Results
are the canonical ``results`` columns (one row per die and test: 50 M rows at full size).

Timed, each as one warm-up call (numba compile or cache load, reported apart) then the median of
``--repeat`` calls:

* ``run_pat`` with the default recipe, and its stages (``PatResult.timings``);
* the same recipe with NNR on the two IDDQ tests only (NNR is the engine's one per-test
  neighbourhood pass: its cost grows with the tests it screens);
* anchor: a plain polars dynamic PAT on the same frames: join results to the good final die,
  robust limits per wafer x test (median ± 6 IQR/1.35 from ``quantile``), flag the values
  outside. It does far less (no SPAT/NNR/GDBN/..., no dispositions table).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import polars as pl

from backend_fab.machine import describe


def machine() -> str:
    return describe(("numpy", "polars", "numba"))


def make_lot(n_wafers: int, radius: int, n_tests: int, seed: int = 0) -> dict[str, pl.DataFrame]:
    """Frames of one lot: die, results, tests (see the module docstring)."""
    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.arange(-radius, radius + 1), np.arange(-radius, radius + 1))
    keep = xs**2 + ys**2 <= radius**2
    xs = xs[keep].astype(np.int32)
    ys = ys[keep].astype(np.int32)
    n = xs.size
    r2 = (xs.astype(np.float64) ** 2 + ys.astype(np.float64) ** 2) / radius**2
    site = (np.mod(xs, 2) + 2 * np.mod(ys, 2)).astype(np.int16)
    die_parts, res_parts = [], []
    test_nums = np.arange(1000, 1000 + n_tests, dtype=np.int64)
    for w in range(n_wafers):
        run_id = f"{w:02d}" + "f" * 62  # 64 characters, like the content-hash run ids
        hbin = np.where(rng.random(n) < 0.05, 5, 1).astype(np.int32)
        die_parts.append(
            pl.DataFrame(
                {
                    "run_id": pl.Series([run_id]).new_from_index(0, n),
                    "part_seq": np.arange(n, dtype=np.int64),
                    "product": pl.Series(["BENCH"]).new_from_index(0, n),
                    "lot_id": pl.Series(["LOT1"]).new_from_index(0, n),
                    "wafer_id": pl.Series([f"{w + 1:02d}"]).new_from_index(0, n),
                    "site": site,
                    "x": xs,
                    "y": ys,
                    "hbin": hbin,
                    "sbin": hbin,
                    "passed": hbin == 1,
                    "final": np.ones(n, dtype=bool),
                    "retest_index": np.zeros(n, dtype=np.int16),
                }
            )
        )
        vals = rng.standard_normal((n, n_tests)) + 2.0 * r2[:, None]
        planted = rng.random((n, n_tests)) < 0.0002
        vals[planted] += 9.0
        res_parts.append(
            pl.DataFrame(
                {
                    "run_id": pl.Series([run_id]).new_from_index(0, n * n_tests),
                    "part_seq": np.repeat(np.arange(n, dtype=np.int64), n_tests),
                    "test_num": np.tile(test_nums, n),
                    "pin": np.full(n * n_tests, -1, dtype=np.int32),
                    "value": vals.ravel(),
                }
            )
        )
    names = [f"TEST_{t}" for t in test_nums]
    if n_tests >= 2:
        names[0], names[1] = "IDDQ_PreStrs", "IDDQ_PostStrs"
    from backend_fab import schema

    tests = pl.DataFrame(
        {
            "run_id": [f"{0:02d}" + "f" * 62] * n_tests,
            "test_num": test_nums,
            "kind": ["P"] * n_tests,
            "test_name": names,
            "lo_limit": [-40.0] * n_tests,
            "hi_limit": [40.0] * n_tests,
        }
    )
    return {
        "die": schema.conform("die", pl.concat(die_parts)),
        "results": pl.concat(res_parts),
        "tests": schema.conform("tests", tests),
    }


def polars_dpat(frames: dict[str, pl.DataFrame], k: float = 6.0) -> int:
    """The anchor: robust DPAT per wafer x test in plain polars; returns the flag count."""
    good = frames["die"].lazy().filter(pl.col("final") & (pl.col("hbin") == 1))
    vals = (
        frames["results"]
        .lazy()
        .join(good.select("run_id", "part_seq", "wafer_id"), on=["run_id", "part_seq"])
    )
    v = pl.col("value")
    lim = vals.group_by("wafer_id", "test_num").agg(
        q1=v.quantile(0.25, "linear"), q2=v.quantile(0.5, "linear"), q3=v.quantile(0.75, "linear")
    )
    flags = (
        vals.join(lim, on=["wafer_id", "test_num"])
        .filter(
            (v < pl.col("q2") - k * (pl.col("q3") - pl.col("q1")) / 1.35)
            | (v > pl.col("q2") + k * (pl.col("q3") - pl.col("q1")) / 1.35)
        )
        .select(pl.len())
        .collect()
    )
    return int(flags.item())


def timed(fn, repeat: int) -> tuple[float, float, list[float], object]:
    t = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t
    walls = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t)
    return first, statistics.median(walls), walls, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny lot, for the test suite")
    ap.add_argument("--wafers", type=int, default=25)
    ap.add_argument("--radius", type=int, default=178)
    ap.add_argument("--tests", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="write the rows as JSON here")
    args = ap.parse_args(argv)
    if args.smoke:
        args.wafers, args.radius, args.tests, args.repeat = 3, 25, 4, 1
    from backend_fab.pat import load_recipe, run_pat

    print(f"machine: {machine()}")
    t = time.perf_counter()
    frames = make_lot(args.wafers, args.radius, args.tests)
    n_die = frames["die"].height
    n_values = frames["results"].height
    print(
        f"lot: {args.wafers} wafers x {n_die // args.wafers:,} die, {args.tests} tests = "
        f"{n_values:,} values (generated in {time.perf_counter() - t:.1f} s)"
    )
    default = load_recipe()
    iddq_only = default.replace(nnr={"tests": [1000, 1001]})
    rows = []

    def report(name: str, first: float, median: float, walls, extra: str = "") -> None:
        rate = n_values / median / 1e6
        print(
            f"{name:<44} first call {first:7.2f} s   steady {median:7.3f} s "
            f"({rate:6.1f} M values/s) {extra}"
        )
        rows.append(
            {
                "what": name,
                "first_s": first,
                "median_s": median,
                "walls_s": walls,
                "values": n_values,
                "rate": n_values / median,
            }
        )

    first, med, walls, anchor_flags = timed(lambda: polars_dpat(frames), args.repeat)
    report("anchor: plain polars robust DPAT", first, med, walls, f"{anchor_flags} flags")
    anchor = med
    for name, rec in (
        ("run_pat, default recipe", default),
        ("run_pat, default recipe, NNR on 2 tests", iddq_only),
    ):
        first, med, walls, res = timed(lambda rec=rec: run_pat(frames, rec), args.repeat)
        dpat = res.dispositions.filter(pl.col("rule") == "dpat").height
        report(
            name,
            first,
            med,
            walls,
            f"{res.dispositions.height} reasons ({dpat} dpat), x{anchor / med:.2f} vs anchor",
        )
        stages = ", ".join(f"{k} {v:.3f}" for k, v in res.timings.items() if k != "total")
        print(f"    stages of the last call (s): {stages}")
        rows[-1]["stages_s"] = dict(res.timings)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine(), "n_values": n_values, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
