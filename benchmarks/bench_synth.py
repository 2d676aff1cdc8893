"""Benchmark of the synthetic-fab generator: die per second on a production day.

    .venv/bin/python benchmarks/bench_synth.py             # bench-day (20 lots x 25 wafers)
    .venv/bin/python benchmarks/bench_synth.py --lots 3    # a slice: 3 lots of each product
    .venv/bin/python benchmarks/bench_synth.py --smoke     # the ci scenario, seconds

What is measured, in one process:

* setup (apart): scenario load and product plans (layouts, probe order, neighbour tables;
  includes the scipy import of the ring computation);
* warm-up (apart): the first lot of each product, which includes the first calls into polars
  and numpy's generators and numba's first dispatch of the synthetic-fab kernels (loaded from
  numba's cache when warm);
* wafer sort (:meth:`SynthFab.iter_runs` with ``back_end=False``): every WS1 run of the
  scenario with all its tables and truth, with 1 generator thread and with the default threads
  (the usable cores, at most 4): wafer-sort die per second, results per second;
* the whole fab (wafer sort, assembly, FT1 and PBI), with 1 thread and the default threads:
  wall and CPU seconds, wafer-sort die per second, and tested die per second (rows of the
  ``die`` table of every tester insertion: a wafer-sort die, or a packaged unit at FT1 or PBI);
* peak resident memory (``ru_maxrss``).

Each pass consumes the runs one at a time and drops them, as a lake writer does.

Anchors measured in the same run:

* ``naive``: an obviously-correct per-die Python loop (``random.gauss`` per test, the same bin
  decision) on one wafer of the same product: the speed-up of the vectorised generator;
* ``floor``: numpy drawing the same number of standard normals as the wafer-sort values plus a
  bare polars frame of the same results rows: how close the generator runs to the cost of just
  producing its random numbers and one output table (ratio = generator time / floor time, 1
  thread, CPU seconds);
* ``rng``: numpy drawing as many float32 standard normals as the wafer-sort noise grids (wafers x
  die x tests) and nothing else: the die rate these draws alone allow on one core.

Figures depend on the machine's load: CPU seconds are printed next to wall seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import resource
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from backend_fab.machine import describe


def machine() -> str:
    return describe(("numpy", "polars", "numba"))


def naive_wafer(plan, rng: random.Random) -> tuple[int, float, float]:
    """One wafer, die by die: values per test with random.gauss, then the first failing test.

    Returns (die, wall seconds, CPU seconds)."""
    tests = plan.tests
    t0, c0 = time.perf_counter(), time.process_time()
    n_fail = 0
    for k in range(plan.n):
        rho2 = float(plan.rho2[k])
        failed = False
        for t in tests:
            if t.family == "FUNC":
                ok = rng.random() > 0.01
            else:
                z = rng.gauss(0.0, 1.0) + t.radial * (2.0 * rho2 - 1.0)
                value = t.nominal + t.sigma * z
                if t.family == "LEAK":
                    value = float(np.exp(value))
                lo = t.lo_limit if t.lo_limit is not None else -np.inf
                hi = t.hi_limit if t.hi_limit is not None else np.inf
                ok = lo <= value <= hi
            if not ok and not failed:
                failed = True
        n_fail += failed
    return plan.n, time.perf_counter() - t0, time.process_time() - c0


def floor_seconds(n_values: int) -> tuple[float, float]:
    """numpy normals for every value + a bare polars frame of the results rows (wall, CPU)."""
    t0, c0 = time.perf_counter(), time.process_time()
    rng = np.random.default_rng(0)
    values = rng.standard_normal(n_values)
    pl.DataFrame(
        {
            "part_seq": np.arange(n_values, dtype=np.int64) // 20,
            "test_num": np.zeros(n_values, dtype=np.int64),
            "value": values,
        }
    )
    return time.perf_counter() - t0, time.process_time() - c0


def rng_seconds(n_normals: int) -> tuple[float, float]:
    """numpy float32 standard normals, as many as the wafer-sort noise grids (wall, CPU)."""
    t0, c0 = time.perf_counter(), time.process_time()
    rng = np.random.default_rng(0)
    chunk = np.empty(min(n_normals, 1 << 22), dtype=np.float32)
    left = n_normals
    while left > 0:
        k = min(left, chunk.size)
        rng.standard_normal(k, dtype=np.float32, out=chunk[:k])
        left -= k
    return time.perf_counter() - t0, time.process_time() - c0


def timed_pass(fab, workers: int, back_end: bool, plan_of: dict) -> dict:
    """Consume every run of ``fab`` once (dropping each); wall/CPU seconds and row counts."""
    n = {"ws_die": 0, "tested_die": 0, "results": 0, "ws_results": 0, "units": 0, "normals": 0}
    t0, c0 = time.perf_counter(), time.process_time()
    for run in fab.iter_runs(workers=workers, back_end=back_end):
        insertion = run["runs"].item(0, "insertion")
        if "die" in run:
            n["tested_die"] += run["die"].height
        n["results"] += run["results"].height if "results" in run else 0
        n["units"] += run["units"].height if "units" in run else 0
        if insertion == "WS1":
            n["ws_die"] += run["die"].height
            n["ws_results"] += run["results"].height
            plan = plan_of[run["runs"].item(0, "product")]
            n["normals"] += run["wafers"].height * plan.n * len(plan.tests)  # the z grid
        del run
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0, **n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="the ci scenario (seconds)")
    ap.add_argument("--scenario", default="bench-day", help="packaged scenario name or TOML path")
    ap.add_argument(
        "--lots", type=int, default=None, help="generate only the first N lots of each product"
    )
    ap.add_argument(
        "--workers", type=int, default=None, help="generator threads (default: cores, at most 4)"
    )
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    scenario = "ci" if args.smoke else args.scenario
    if args.lots is not None and args.lots < 1:
        ap.error("--lots must be >= 1")

    print(f"machine: {machine()}")
    c0, t0 = time.process_time(), time.perf_counter()
    from backend_fab.synth import generate_fab, load_scenario
    from backend_fab.synth.generator import default_workers

    workers = args.workers or default_workers()
    loaded = load_scenario(scenario)
    if args.lots is not None:
        products = tuple(
            dataclasses.replace(p, lots=min(p.lots, args.lots)) for p in loaded.products
        )
        loaded = dataclasses.replace(loaded, products=products)
    fab = generate_fab(loaded)
    plans = fab.plans
    setup_s = time.perf_counter() - t0
    print(
        f"setup (imports, scenario, {len(plans)} product plan(s)): {setup_s:.2f} s wall, "
        f"{time.process_time() - c0:.2f} s CPU"
    )
    plan_of = {plan.config.name: plan for plan in plans}

    # warm-up: the first lot of each product (first calls, numba dispatch), reported apart
    first = dataclasses.replace(
        loaded, products=tuple(dataclasses.replace(p, lots=1) for p in loaded.products)
    )
    warm = timed_pass(generate_fab(first), 1, False, plan_of)
    print(
        f"warm-up (first lot of each product, 1 thread): {warm['ws_die']:,} die rows in "
        f"{warm['wall']:.2f} s wall ({warm['cpu']:.2f} s CPU)"
    )

    passes = {}
    for label, back_end in (("wafer sort", False), ("whole fab", True)):
        for w in dict.fromkeys((1, workers)):
            r = passes[(label, w)] = timed_pass(fab, w, back_end, plan_of)
            line = (
                f"{label}, {w} thread(s): {r['wall']:.2f} s wall / {r['cpu']:.2f} s CPU -> "
                f"{r['ws_die'] / r['wall']:,.0f} wafer-sort die/s wall "
                f"({r['ws_die'] / r['cpu']:,.0f}/s CPU)"
            )
            if back_end:
                line += (
                    f", {r['tested_die'] / r['wall']:,.0f} tested die/s wall "
                    f"({r['tested_die']:,} die rows: {r['ws_die']:,} wafer-sort die + "
                    f"{r['tested_die'] - r['ws_die']:,} FT1/PBI units)"
                )
            else:
                line += (
                    f", {r['results'] / r['wall']:,.0f} results/s wall ({r['ws_die']:,} die "
                    f"rows, {r['results']:,} results)"
                )
            print(line)
    ws1 = passes[("wafer sort", 1)]
    wsn = passes[("wafer sort", workers)]
    fab1 = passes[("whole fab", 1)]
    fabn = passes[("whole fab", workers)]
    if workers > 1:
        print(
            f"threads: wafer sort {ws1['wall'] / wsn['wall']:.2f}x, whole fab "
            f"{fab1['wall'] / fabn['wall']:.2f}x faster with {workers} than with 1 (wall)"
        )

    # anchors: ratios use CPU seconds of the 1-thread passes (robust to other load)
    plan = plans[0]
    n_naive, t_naive, c_naive = naive_wafer(plan, random.Random(1))
    gen_cpu_rate = ws1["ws_die"] / ws1["cpu"]
    print(
        f"anchor naive (per-die Python loop, 1 wafer of {plan.config.name}, values and bins only): "
        f"{n_naive / c_naive:,.0f} die/s CPU ({n_naive / t_naive:,.0f} wall) -> the vectorised "
        f"generator is {gen_cpu_rate / (n_naive / c_naive):,.1f}x faster (CPU, 1 thread) while "
        f"also writing every table and the truth"
    )
    floor = floor_seconds(ws1["results"])
    print(
        f"anchor floor (numpy normals + a bare 3-column frame for {ws1['results']:,} "
        f"results): {floor[1]:.2f} s CPU ({floor[0]:.2f} s wall) -> wafer sort / floor = "
        f"{ws1['cpu'] / floor[1]:.1f}x (CPU, 1 thread)"
    )
    wall_s, cpu_s = rng_seconds(ws1["normals"])
    rng_floor = (wall_s, max(cpu_s, 1e-9))
    print(
        f"anchor rng (numpy float32 standard normals, as many as the wafer-sort noise grids: "
        f"{ws1['normals']:,}): {rng_floor[1]:.2f} s CPU ({rng_floor[0]:.2f} s wall) -> these "
        f"draws alone cap one core at {ws1['ws_die'] / rng_floor[1]:,.0f} die/s; wafer sort / "
        f"rng = {ws1['cpu'] / rng_floor[1]:.1f}x (CPU, 1 thread)"
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss:,.0f} MB")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "scenario": scenario,
                    "lots_per_product": args.lots,
                    "workers": workers,
                    "setup_s": setup_s,
                    "warm_up": warm,
                    "passes": {f"{label}/{w}": r for (label, w), r in passes.items()},
                    "die": fabn["ws_die"],
                    "die_per_s_wall": fabn["ws_die"] / fabn["wall"],
                    "tested_die_per_s_wall": fabn["tested_die"] / fabn["wall"],
                    "ws_die_per_s_wall": wsn["ws_die"] / wsn["wall"],
                    "ws_die_per_s_cpu": gen_cpu_rate,
                    "naive_die_per_s_cpu": n_naive / c_naive,
                    "floor_s": floor,
                    "rng_s": rng_floor,
                    "peak_rss_mb": rss,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
