"""Benchmark of wafer-pattern recognition: features + prediction throughput on one core.

Run: ``.venv/bin/python benchmarks/bench_patterns.py [--smoke] [--wafers N] [--json PATH]``

Workload: ``--wafers`` (400; 6 with ``--smoke``) wafer maps of a round 100 x 100 die grid (7,860
die; 30 x 30 with ``--smoke``) carrying the nine WM-811K classes in turn, drawn with the synthetic
fab's signatures on 3-10 % background. numba runs on **one thread** (``numba.set_num_threads(1)``)
so the figures are per core. Times are the median of ``--repeat`` runs (3; 1 with ``--smoke``),
in wall and CPU seconds of this process (the machine may be shared: CPU seconds are the steadier
figure).

Reported:

* **first call** of the feature kernel and of the forest kernel (numba compile, or loading the
  compiled code from the on-disk cache when it is warm), apart from the steady state;
* **features** (``wafer_features`` on flat die arrays), **prediction** (the shipped model's
  ``predict_proba``: 150 trees) and **features + prediction**, in wafers/s, against the goal of
  1,000 wafers/s for 100 x 100-die maps;
* the whole lazy pipeline ``classify_wafers`` on a die table (grouping, features, calibrated
  prediction, top features) in wafers/s;

and, as anchors measured in the same run: the naive pure-Python feature reference
(``kernels/tests/naive_features.py``) on 26 x 26-die maps (the common WM-811K size) against the
kernel on the same maps, and scikit-learn's own ``RandomForestClassifier.predict_proba`` on the
same features and an equal forest against the numba forest kernel.
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

REPO = Path(__file__).resolve().parents[1]
GOAL_WAFERS_PER_S = 1000.0


def machine() -> str:
    return describe(("numpy", "numba", "scikit-learn"))


def disc(n: int) -> tuple[np.ndarray, np.ndarray]:
    c = np.arange(n)
    gx, gy = np.meshgrid(c, c)
    inside = ((2 * gx - n + 1) / n) ** 2 + ((2 * gy - n + 1) / n) ** 2 <= 1.0
    return gx[inside].astype(np.int32), gy[inside].astype(np.int32)


def make_maps(n_wafers: int, side: int, seed: int = 0):
    """Flat die arrays of ``n_wafers`` maps on one round layout, classes in turn."""
    from backend_fab.synth.patterns import PATTERN_CLASSES, draw_signature

    x, y = disc(side)
    u = (2.0 * x - (side - 1)) / side
    v = (2.0 * y - (side - 1)) / side
    rng = np.random.default_rng(seed)
    fails = []
    for w in range(n_wafers):
        kind = PATTERN_CLASSES[w % len(PATTERN_CLASSES)]
        prob, _ = draw_signature(kind, u, v, rng, background=rng.uniform(0.03, 0.10))
        fails.append(rng.random(x.size) < prob)
    xs = np.tile(x, n_wafers)
    ys = np.tile(y, n_wafers)
    offsets = np.arange(n_wafers + 1, dtype=np.int64) * x.size
    return xs, ys, np.concatenate(fails), offsets


def timed(fn, repeat: int):
    walls, cpus = [], []
    out = None
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), out


def first_call(fn) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def run(n_wafers: int, side: int, repeat: int, naive_wafers: int, smoke: bool = False) -> dict:
    import numba
    import polars as pl

    numba.set_num_threads(1)
    from backend_fab_kernels.tree_ensemble import forest_proba
    from backend_fab_kernels.wafer_features import FEATURE_NAMES, wafer_features

    from backend_fab.patterns import classify_wafers, default_model

    x, y, fail, off = make_maps(n_wafers, side)
    die_per_wafer = int(off[1])
    model = default_model()
    res: dict = {
        "machine": machine(),
        "wafers": n_wafers,
        "die_per_wafer": die_per_wafer,
        "threads": numba.get_num_threads(),
    }

    tiny = (x[:die_per_wafer], y[:die_per_wafer], fail[:die_per_wafer], off[:2])
    res["first_call_features_s"] = first_call(lambda: wafer_features(*tiny))
    X1 = wafer_features(*tiny)
    arrays = (
        model.tree_feature_,
        model.tree_threshold_,
        model.tree_left_,
        model.tree_right_,
        model.tree_value_,
        model.tree_offsets_,
    )
    res["first_call_forest_s"] = first_call(lambda: forest_proba(X1, *arrays))

    wall, cpu, X = timed(lambda: wafer_features(x, y, fail, off), repeat)
    res["features"] = {
        "wall_s": wall,
        "cpu_s": cpu,
        "wafers_per_s_wall": n_wafers / wall,
        "wafers_per_s_cpu": n_wafers / cpu,
    }
    Xdf = pl.DataFrame(X, schema=list(FEATURE_NAMES), orient="row")
    wall, cpu, _ = timed(lambda: model.predict_proba(Xdf), repeat)
    res["prediction"] = {
        "wall_s": wall,
        "cpu_s": cpu,
        "wafers_per_s_wall": n_wafers / wall,
        "wafers_per_s_cpu": n_wafers / cpu,
    }
    f, p = res["features"], res["prediction"]
    both_wall, both_cpu = f["wall_s"] + p["wall_s"], f["cpu_s"] + p["cpu_s"]
    res["features_plus_prediction"] = {
        "wafers_per_s_wall": n_wafers / both_wall,
        "wafers_per_s_cpu": n_wafers / both_cpu,
        "goal": GOAL_WAFERS_PER_S,
        "ratio_to_goal_cpu": n_wafers / both_cpu / GOAL_WAFERS_PER_S,
        "ratio_to_goal_wall": n_wafers / both_wall / GOAL_WAFERS_PER_S,
    }

    counts = np.diff(off)
    die = pl.DataFrame(
        {
            "lot_id": "L1",
            "wafer_id": np.repeat(np.array([f"W{w:04d}" for w in range(n_wafers)]), counts),
            "x": x,
            "y": y,
            "hbin": np.where(fail, 2, 1).astype(np.int32),
        }
    )
    classify_wafers(die.head(die_per_wafer)).collect()
    wall, cpu, out = timed(lambda: classify_wafers(die).collect(), repeat)
    assert out.height == n_wafers
    res["pipeline"] = {
        "wall_s": wall,
        "cpu_s": cpu,
        "wafers_per_s_wall": n_wafers / wall,
        "wafers_per_s_cpu": n_wafers / cpu,
    }

    # anchor 1: the naive pure-Python references on WM-811K-sized maps (26 x 26 die)
    sys.path.insert(0, str(REPO / "kernels" / "tests"))
    import naive_features

    sx, sy, sf, so = make_maps(naive_wafers, 12 if smoke else 26, seed=1)
    _, cpu_n, _ = timed(lambda: naive_features.wafer_features(sx, sy, sf, so), 1)
    _, cpu_k, _ = timed(lambda: wafer_features(sx, sy, sf, so), repeat)
    res["anchor_naive_26x26"] = {
        "side": 12 if smoke else 26,
        "wafers": naive_wafers,
        "naive_cpu_s": cpu_n,
        "kernel_cpu_s": cpu_k,
        "naive_wafers_per_s": naive_wafers / cpu_n,
        "kernel_wafers_per_s": naive_wafers / cpu_k,
        "speedup": cpu_n / cpu_k,
    }

    # anchor 2: scikit-learn's forest prediction on the same features, same forest size
    from sklearn.ensemble import RandomForestClassifier

    from backend_fab.patterns.training import generate_maps

    train = generate_maps(30, seed=2, die_range=(300, 1500))
    rf = RandomForestClassifier(
        n_estimators=int(model.tree_offsets_.size - 1), min_samples_leaf=3, random_state=0, n_jobs=1
    )
    rf.fit(train.features(), train.label)
    wall_s, cpu_s, _ = timed(lambda: rf.predict_proba(X), repeat)
    ours = []
    for est in rf.estimators_:
        t = est.tree_
        leaf = t.children_left < 0
        ours.append(
            (
                np.where(leaf, -1, t.feature),
                t.threshold,
                t.children_left,
                t.children_right,
                t.value[:, 0, :] / t.value[:, 0, :].sum(axis=1, keepdims=True),
                t.node_count,
            )
        )
    base = np.cumsum([0] + [o[5] for o in ours])
    rf_arrays = (
        np.concatenate([o[0] for o in ours]),
        np.concatenate([o[1] for o in ours]),
        np.concatenate(
            [np.where(o[2] < 0, -1, o[2] + b) for o, b in zip(ours, base, strict=False)]
        ),
        np.concatenate(
            [np.where(o[3] < 0, -1, o[3] + b) for o, b in zip(ours, base, strict=False)]
        ),
        np.concatenate([o[4] for o in ours]),
        base.astype(np.int64),
    )
    forest_proba(X[:1], *rf_arrays)
    wall_o, cpu_o, got = timed(lambda: forest_proba(X, *rf_arrays), repeat)
    assert np.allclose(got, rf.predict_proba(X), atol=1e-12)
    res["anchor_sklearn_forest"] = {
        "trees": len(ours),
        "sklearn_cpu_s": cpu_s,
        "numba_cpu_s": cpu_o,
        "sklearn_wall_s": wall_s,
        "numba_wall_s": wall_o,
        "speedup_cpu": cpu_s / cpu_o,
    }
    return res


def report(res: dict) -> None:
    print(f"machine: {res['machine']}; numba threads: {res['threads']}")
    print(f"workload: {res['wafers']} wafers x {res['die_per_wafer']} die")
    for key in ("first_call_features_s", "first_call_forest_s"):
        w, c = res[key]
        print(f"{key.replace('_s', '')}: {w:.2f} s wall, {c:.2f} s CPU (compile or cache load)")
    for key in ("features", "prediction", "pipeline"):
        r = res[key]
        print(
            f"{key:12s}: {r['wafers_per_s_cpu']:9.0f} wafers/s CPU ({r['wafers_per_s_wall']:.0f} wall)"
        )
    b = res["features_plus_prediction"]
    print(
        f"features + prediction: {b['wafers_per_s_cpu']:.0f} wafers/s CPU "
        f"({b['wafers_per_s_wall']:.0f} wall); goal {b['goal']:.0f}: "
        f"ratio {b['ratio_to_goal_cpu']:.2f} (CPU), {b['ratio_to_goal_wall']:.2f} (wall)"
    )
    a = res["anchor_naive_26x26"]
    print(
        f"anchor naive Python features, 26x26 maps: {a['naive_wafers_per_s']:.1f} wafers/s CPU; "
        f"kernel {a['kernel_wafers_per_s']:.0f}: {a['speedup']:.0f}x"
    )
    s = res["anchor_sklearn_forest"]
    print(
        f"anchor scikit-learn predict_proba ({s['trees']} trees): {s['sklearn_cpu_s']:.3f} s CPU; "
        f"numba forest {s['numba_cpu_s']:.3f} s: {s['speedup_cpu']:.1f}x"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny run, seconds, no timing claims")
    ap.add_argument("--wafers", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    n = args.wafers or (6 if args.smoke else 400)
    side = 30 if args.smoke else 100
    repeat = args.repeat or (1 if args.smoke else 3)
    res = run(n, side, repeat, naive_wafers=1 if args.smoke else 9, smoke=args.smoke)
    report(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
