"""Benchmark of the wafer-map kernels on one core: die per second, against anchors in the same run.

    .venv/bin/python benchmarks/bench_spatial.py            # bench-day lot + a 100k-die wafer
    .venv/bin/python benchmarks/bench_spatial.py --smoke    # tiny grids, seconds, no figures kept
    .venv/bin/python benchmarks/bench_spatial.py --json out.json

Inputs, generated directly as grids (int8 state: -1 no die, 0 good, 1 bad; independent fails):

* ``lot``: one bench-day lot, 25 wafers of the 300 mm / 3.0 mm product (about 7,300 die each,
  10 % fails);
* ``big``: one 100k-die wafer (a disk of radius 178 die, 10 % fails: about 10k fails).

For every kernel: the first call (compile, or load from numba's cache: the cache state is
printed) apart from the steady state (median of ``--repeat`` calls), wall and CPU seconds, on one
numba thread. Anchors measured in the same run:

* GDBN 3x3: a plain numba loop over the int8 grid (count the bad 8-neighbours of every cell,
  flag >= 2: the obvious kernel), and the naive per-die Python reference of kernels/tests/naive.py
  on one small wafer;
* ``label_components``: ``scipy.ndimage.label`` on the same fail mask (4 and 8 connectivity);
* ``dbscan_grid``: scikit-learn's ``DBSCAN`` (eps 1.5, min_samples 3) on the fail coordinates of
  the 100k-die wafer;
* NNR 5x5, cluster features, join counts: the naive references on a small wafer.

Goals (brief): GDBN 3x3 >= 250 M die/s; ``label_components`` faster than scipy; ``dbscan_grid``
>= 50x scikit-learn; NNR 5x5 >= 5 M die-tests/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from backend_fab.machine import describe

KERNEL_TESTS = Path(__file__).resolve().parents[1] / "kernels" / "tests"


def machine() -> str:
    return describe(("numpy", "numba", "scipy", "scikit-learn"))


def disk_grid(radius: float, n_wafers: int, p: float, seed: int) -> np.ndarray:
    n = int(2 * radius) + 3
    yy, xx = np.mgrid[0:n, 0:n]
    c = (n - 1) / 2
    die = (xx - c) ** 2 + (yy - c) ** 2 <= radius * radius
    rng = np.random.default_rng(seed)
    fail = rng.random((n_wafers, n, n)) < p
    return np.where(die[None], fail.astype(np.int8), np.int8(-1)).astype(np.int8)


def timed(fn, repeat: int) -> dict:
    """First call apart, then the median wall / CPU seconds of ``repeat`` calls."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    walls, cpus = [], []
    for _ in range(repeat):
        c0 = time.thread_time()
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.thread_time() - c0)
    return {"first_s": first, "wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus)}


def plain_gdbn_loop():
    """The obvious numba kernel: count bad 8-neighbours of every good die, flag >= 2."""
    import numba

    @numba.njit(cache=False, nogil=True)
    def plain(state):
        n_w, ny, nx = state.shape
        out = np.zeros((n_w, ny, nx), dtype=np.uint8)
        for w in range(n_w):
            for y in range(1, ny - 1):
                for x in range(1, nx - 1):
                    if state[w, y, x] != 0:
                        continue
                    c = 0
                    for dy in range(-1, 2):
                        for dx in range(-1, 2):
                            c += state[w, y + dy, x + dx] == 1
                    out[w, y, x] = c >= 2
        return out

    return plain


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny grids, one repeat")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)

    import numba

    if str(KERNEL_TESTS) not in sys.path:
        sys.path.insert(0, str(KERNEL_TESTS))
    import naive
    from backend_fab_kernels import _config

    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        rows = _run(args, naive, numba)
    finally:
        numba.set_num_threads(threads)
    _report(args, rows, numba, _config)
    return 0


def _run(args, naive, numba) -> list[dict]:
    from backend_fab_kernels.components import component_features, label_components
    from backend_fab_kernels.dbscan import dbscan_grid
    from backend_fab_kernels.gdbn import gdbn
    from backend_fab_kernels.nnr import nnr_residuals
    from backend_fab_kernels.spatial_stats import join_count_permutation, join_counts
    from backend_fab_kernels.zstack import zstack
    from scipy import ndimage
    from sklearn.cluster import DBSCAN

    repeat = 1 if args.smoke else args.repeat
    if args.smoke:
        lot = disk_grid(12.0, 3, 0.1, 1)
        big = disk_grid(20.0, 1, 0.1, 2)
        small = disk_grid(6.0, 1, 0.1, 3)
    else:
        lot = disk_grid(48.5, 25, 0.1, 1)  # ~7.4k die per wafer, a bench-day 300 mm / 3 mm wafer
        big = disk_grid(178.0, 1, 0.1, 2)  # ~100k die
        small = disk_grid(15.0, 1, 0.1, 3)  # ~700 die, for the naive references
    n_lot = int((lot >= 0).sum())
    n_big = int((big >= 0).sum())
    n_small = int((small >= 0).sum())
    fails_big = big[0] == 1
    rows = []

    def add(name, size, n, unit, t, anchor=None, anchor_t=None, anchor_n=None):
        rate = n / t["wall_s"]
        row = {"kernel": name, "input": size, "n": n, "unit": unit, **t, "rate": rate}
        if anchor is not None:
            a_rate = anchor_n / anchor_t["wall_s"]
            row.update(
                anchor=anchor,
                anchor_wall_s=anchor_t["wall_s"],
                anchor_rate=a_rate,
                ratio=rate / a_rate,
            )
        rows.append(row)

    plain = plain_gdbn_loop()
    t_plain = timed(lambda: plain(lot), repeat)
    t_naive_gdbn = timed(lambda: naive.gdbn(small), 1)
    for alg in ("squeeze", "weighting"):
        t = timed(lambda alg=alg: gdbn(lot, alg), repeat)
        add(f"gdbn 3x3 {alg}", "lot", n_lot, "die", t, "plain numba loop", t_plain, n_lot)
        rows[-1]["naive_rate"] = n_small / t_naive_gdbn["wall_s"]
    t = timed(lambda: gdbn(lot, "weighting", window=5), repeat)
    add("gdbn 5x5 weighting", "lot", n_lot, "die", t)
    t = timed(lambda: gdbn(big), repeat)
    add(
        "gdbn 3x3 squeeze",
        "big",
        n_big,
        "die",
        t,
        "plain numba loop",
        timed(lambda: plain(big), repeat),
        n_big,
    )

    for conn in (4, 8):
        structure = None if conn == 4 else np.ones((3, 3), dtype=bool)
        t = timed(lambda conn=conn: label_components(big, conn), repeat)
        ts = timed(
            lambda structure=structure: ndimage.label(fails_big, structure=structure), repeat
        )
        add(f"label_components {conn}", "big", n_big, "die", t, "scipy.ndimage.label", ts, n_big)
        t = timed(lambda conn=conn: label_components(lot, conn), repeat)
        ts = timed(
            lambda structure=structure: [ndimage.label(w == 1, structure=structure) for w in lot],
            repeat,
        )
        add(f"label_components {conn}", "lot", n_lot, "die", t, "scipy.ndimage.label", ts, n_lot)

    labels, counts = label_components(big, 8)
    t = timed(lambda: component_features(labels, counts, big), repeat)
    add("component_features", "big", n_big, "die", t)
    sl, sc = label_components(small, 8)
    tn = timed(lambda: naive.component_features(sl, sc, small), 1)
    rows[-1]["naive_rate"] = n_small / tn["wall_s"]

    ys, xs = np.nonzero(fails_big)
    pts = np.c_[xs, ys].astype(np.float64)
    t = timed(lambda: dbscan_grid(big, 1.5, 3), repeat)
    tk = timed(lambda: DBSCAN(eps=1.5, min_samples=3).fit(pts), max(1, repeat // 2))
    add(
        "dbscan_grid",
        "big fails",
        int(fails_big.sum()),
        "fail die",
        t,
        "sklearn DBSCAN",
        tk,
        int(fails_big.sum()),
    )

    vals = np.where(lot >= 0, np.random.default_rng(5).normal(size=lot.shape), np.nan)[None].repeat(
        2, axis=0
    )
    t = timed(lambda: nnr_residuals(vals, 5, 70.0), repeat)
    add("nnr_residuals 5x5", "lot x 2 tests", 2 * n_lot, "die-tests", t)
    sv = np.where(small >= 0, np.random.default_rng(6).normal(size=small.shape), np.nan)
    tn = timed(lambda: naive.nnr_residuals(sv), 1)
    rows[-1]["naive_rate"] = n_small / tn["wall_s"]

    t = timed(lambda: zstack(lot), repeat)
    add("zstack", "lot", n_lot, "die", t)
    t = timed(lambda: join_counts(lot, 4), repeat)
    add("join_counts", "lot", n_lot, "die", t)
    tn = timed(lambda: naive.join_counts(small, 4), 1)
    rows[-1]["naive_rate"] = n_small / tn["wall_s"]
    n_perm = 9 if args.smoke else 99
    t = timed(lambda: join_count_permutation(lot, 4, n_perm, 0), max(1, repeat // 2))
    add(f"join_count_permutation x{n_perm}", "lot", n_lot * n_perm, "die-permutations", t)

    return rows


def _report(args, rows, numba, config) -> None:
    lot = next(r for r in rows if r["input"] == "lot")["n"]
    big = next(r for r in rows if r["input"] == "big")["n"]
    n_w = 3 if args.smoke else 25
    cache = "on" if config.CACHE else "off"
    print(f"bench_spatial on {machine()}; numba {numba.__version__}, 1 thread, cache {cache}")
    print(f"inputs: lot = {n_w} wafers x {lot // n_w} die; big = 1 wafer x {big} die; 10 % fails")
    head = (
        f"{'kernel':34s} {'input':14s} {'first s':>8s} {'wall ms':>9s} {'cpu ms':>8s} "
        f"{'rate/s':>10s} {'cpu rate':>10s}  unit; anchor (wall rates)"
    )
    print(head)
    for r in rows:
        line = (
            f"{r['kernel']:34s} {r['input']:14s} {r['first_s']:8.2f} {1e3 * r['wall_s']:9.2f} "
            f"{1e3 * r['cpu_s']:8.2f} {r['rate'] / 1e6:8.1f} M {r['n'] / max(r['cpu_s'], 1e-9) / 1e6:8.1f} M  "
            f"{r['unit']}"
        )
        if "anchor" in r:
            line += f"; {r['anchor']} {r['anchor_rate'] / 1e6:.1f} M/s -> {r['ratio']:.2f}x"
        if "naive_rate" in r:
            line += f"; naive {r['naive_rate'] / 1e3:.1f} k/s -> {r['rate'] / r['naive_rate']:.0f}x"
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
