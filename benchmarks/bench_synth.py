"""Benchmark of the synthetic-fab generator: die per second on a production day.

    .venv/bin/python benchmarks/bench_synth.py             # bench-day (20 lots x 25 wafers)
    .venv/bin/python benchmarks/bench_synth.py --lots 3    # a slice: 3 lots of each product
    .venv/bin/python benchmarks/bench_synth.py --smoke     # the ci scenario, seconds

What is measured, in one process:

* setup (apart from the steady state): scenario load and product plans (layouts, probe order,
  neighbour tables; includes the scipy import of the ring computation);
* the first wafer-sort lot on its own (first calls into polars and numpy's generators, and
  numba's first dispatch of the synthetic-fab kernels, loaded from numba's cache when warm);
* the whole fab, run by run (:meth:`SynthFab.iter_runs`): wall and CPU seconds of the wafer-sort
  runs and of the assembly/final-test runs, wafer-sort die rows per second, results per second,
  and the end-to-end die rate (every run included);
* peak resident memory (``ru_maxrss``).

Anchors measured in the same run:

* ``naive``: an obviously-correct per-die Python loop (``random.gauss`` per test, the same bin
  decision) on one wafer of the same product: the speed-up of the vectorised generator;
* ``floor``: numpy drawing the same number of standard normals as the wafer-sort values plus a
  bare polars frame of the same results rows: how close the generator runs to the cost of just
  producing its random numbers and one output table (ratio = generator time / floor time);
* ``rng``: numpy drawing as many float32 standard normals as the wafer-sort noise grids (wafers x
  die x tests) and nothing else: the die rate these draws alone allow on this machine.

The steady state includes each product's second lot, while the generator's buffer pool (see
``backend_fab.synth._frames.BufferPool``) fills; ``--lots`` slices shorter than ~4 lots per
product therefore understate it.

Figures depend on the machine's load: CPU seconds are printed next to wall seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{model}, {os.cpu_count()} cores, load average {load:.1f}, Python {platform.python_version()}"


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="the ci scenario (seconds)")
    ap.add_argument("--scenario", default="bench-day", help="packaged scenario name or TOML path")
    ap.add_argument(
        "--lots", type=int, default=None, help="generate only the first N lots of each product"
    )
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    scenario = "ci" if args.smoke else args.scenario
    if args.lots is not None and args.lots < 1:
        ap.error("--lots must be >= 1")

    print(f"machine: {machine()}")
    c0, t0 = time.process_time(), time.perf_counter()
    from backend_fab.synth import generate_fab, load_scenario

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

    stats = {
        "ws": {"wall": 0.0, "cpu": 0.0, "runs": 0, "die": 0, "results": 0, "normals": 0},
        "back_end": {"wall": 0.0, "cpu": 0.0, "runs": 0, "units": 0, "results": 0},
    }
    first_lot = None
    plan_of = {plan.config.name: plan for plan in plans}
    it = fab.iter_runs()
    t_all, c_all = time.perf_counter(), time.process_time()
    while True:
        t1, c1 = time.perf_counter(), time.process_time()
        try:
            run = next(it)
        except StopIteration:
            break
        wall, cpu = time.perf_counter() - t1, time.process_time() - c1
        insertion = run["runs"].item(0, "insertion")
        if insertion == "WS1" and first_lot is None:
            first_lot = {"wall": wall, "cpu": cpu, "die": run["die"].height}
            continue  # reported on its own, kept out of the steady state
        key = "ws" if insertion == "WS1" else "back_end"
        s = stats[key]
        s["wall"] += wall
        s["cpu"] += cpu
        s["runs"] += 1
        s["results"] += run["results"].height if "results" in run else 0
        if key == "ws":
            s["die"] += run["die"].height
            plan = plan_of[run["runs"].item(0, "product")]
            s["normals"] += run["wafers"].height * plan.n * len(plan.tests)  # the z grid
        elif "units" in run:
            s["units"] += run["units"].height
    total_wall = time.perf_counter() - t_all
    total_cpu = time.process_time() - c_all
    all_die = stats["ws"]["die"] + first_lot["die"]
    ws = stats["ws"]
    print(
        f"first wafer-sort lot: {first_lot['die']:,} die rows in {first_lot['wall']:.2f} s wall "
        f"({first_lot['cpu']:.2f} s CPU)"
    )
    if ws["runs"]:
        print(
            f"wafer sort, steady state: {ws['runs']} lots, {ws['die']:,} die rows, "
            f"{ws['results']:,} results in {ws['wall']:.2f} s wall / {ws['cpu']:.2f} s CPU -> "
            f"{ws['die'] / ws['wall']:,.0f} die/s wall, {ws['die'] / ws['cpu']:,.0f} die/s CPU, "
            f"{ws['results'] / ws['wall']:,.0f} results/s wall"
        )
    be = stats["back_end"]
    print(
        f"assembly + final test: {be['runs']} runs, {be['units']:,} unit rows in {be['wall']:.2f} s "
        f"wall / {be['cpu']:.2f} s CPU"
    )
    print(
        f"whole fab: {all_die:,} wafer-sort die rows in {total_wall:.2f} s wall / {total_cpu:.2f} s "
        f"CPU -> {all_die / total_wall:,.0f} die/s end to end (wall), "
        f"{all_die / total_cpu:,.0f} die/s (CPU)"
    )

    # anchors: ratios use CPU seconds of the same process (robust to other load on the machine)
    plan = plans[0]
    n_naive, t_naive, c_naive = naive_wafer(plan, random.Random(1))
    steady = ws if ws["runs"] else {**first_lot, "results": 0}
    gen_cpu_rate = steady["die"] / steady["cpu"]
    print(
        f"anchor naive (per-die Python loop, 1 wafer of {plan.config.name}, values and bins only): "
        f"{n_naive / c_naive:,.0f} die/s CPU ({n_naive / t_naive:,.0f} wall) -> the vectorised "
        f"generator is {gen_cpu_rate / (n_naive / c_naive):,.1f}x faster (CPU) while also "
        f"writing every table and the truth"
    )
    floor = None
    if steady["results"]:
        floor = floor_seconds(steady["results"])
        print(
            f"anchor floor (numpy normals + a bare 3-column frame for {steady['results']:,} "
            f"results): {floor[1]:.2f} s CPU ({floor[0]:.2f} s wall) -> generator / floor = "
            f"{steady['cpu'] / floor[1]:.1f}x (CPU)"
        )
    rng_floor = None
    if ws["runs"]:
        wall_s, cpu_s = rng_seconds(ws["normals"])
        rng_floor = (wall_s, max(cpu_s, 1e-9))
        print(
            f"anchor rng (numpy float32 standard normals, as many as the wafer-sort noise grids: "
            f"{ws['normals']:,}): {rng_floor[1]:.2f} s CPU ({rng_floor[0]:.2f} s wall) -> these "
            f"draws alone cap wafer sort at {ws['die'] / rng_floor[1]:,.0f} die/s (CPU); "
            f"generator / rng = {ws['cpu'] / rng_floor[1]:.1f}x (CPU)"
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
                    "setup_s": setup_s,
                    "first_lot": first_lot,
                    "steady": stats,
                    "total_wall_s": total_wall,
                    "total_cpu_s": total_cpu,
                    "die": all_die,
                    "die_per_s_wall": all_die / total_wall,
                    "naive_die_per_s_cpu": n_naive / c_naive,
                    "ws_die_per_s_cpu": gen_cpu_rate,
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
