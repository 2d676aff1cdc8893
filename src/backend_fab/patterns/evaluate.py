"""``backend-fab eval-patterns``: how well the pattern classifier does, on synthetic and real maps.

1. **Synthetic, lot-disjoint**: a fresh synthetic set (:func:`backend_fab.patterns.training.
   generate_maps`, seed from ``--seed``, not the shipped model's seed), ``GroupKFold`` by lot (no
   lot is in a training and a test fold at once), the shipped model's recipe refitted per fold.
   Reported: accuracy, macro-F1, per-class precision / recall / F1, the confusion matrix,
   calibration (expected calibration error over 10 bins, log loss) and the coverage / accuracy
   of the ``unknown`` threshold.
2. **Real WM-811K maps** (``wm811k-sample.json``, 27 maps, 3 per class; never trained on): the
   shipped model through :func:`classify_wafers`. Reported: exact match with its Wilson 95 %
   interval (27 maps give a wide one), per-class recall, the confusion matrix, and the anchor it
   should beat (the training-free rule-based classifier of wafertools/wafermap: 64 % exact match,
   DOMAIN.md §3.5).

Writes ``synthetic-cv.png``, ``wm811k-sample.png`` (confusion matrix and per-class precision /
recall) and ``patterns-eval.json`` (every figure above) into the output folder.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import polars as pl

from backend_fab.errors import BackendFabError

__all__ = [
    "EVAL_N_PER_CLASS",
    "RULE_BASED_ANCHOR",
    "classification_report",
    "cross_validate_synthetic",
    "default_wm811k_path",
    "eval_patterns_command",
    "evaluate_real_maps",
    "load_wm811k_sample",
    "plot_report",
    "wilson_interval",
]

#: Synthetic maps per class for the cross-validation of ``eval-patterns``.
EVAL_N_PER_CLASS = 300
#: Exact match of the training-free rule-based classifier on WM-811K (wafertools/wafermap).
RULE_BASED_ANCHOR = 0.64
_WM811K_FILE = "wm811k-sample.json"
_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)


def default_wm811k_path() -> Path | None:
    """The WM-811K sample beside the project checkout (``../shared/data/wm811k``), if present."""
    here = Path(__file__).resolve()
    candidates = [Path.cwd().parent / "shared" / "data" / "wm811k" / _WM811K_FILE]
    candidates += [p / "shared" / "data" / "wm811k" / _WM811K_FILE for p in here.parents[3:5]]
    for path in candidates:
        if path.is_file():
            return path
    return None


def load_wm811k_sample(path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read a WM-811K sample JSON (records ``failureType, lotName, waferIndex, gridRows,
    gridCols, results[{x, y, hbin}]``; hbin 1 pass, 2 fail).

    Returns ``(die, truth)``: ``die`` with ``lot_id, wafer_id, x, y, hbin`` and ``truth`` with
    ``lot_id, wafer_id, pattern_class`` (one row per map; ``wafer_id`` is the wafer index).
    """
    path = Path(path)
    try:
        records = json.loads(path.read_text())
    except OSError as exc:
        raise BackendFabError(f"cannot read the WM-811K sample {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise BackendFabError(f"WM-811K sample {path} is not JSON: {exc}") from exc
    if not isinstance(records, list) or not records:
        raise BackendFabError(f"WM-811K sample {path}: expected a non-empty JSON array of maps")
    lots, wafers, xs, ys, bins, truth = [], [], [], [], [], []
    for i, rec in enumerate(records):
        try:
            lot = str(rec["lotName"])
            wafer = str(rec["waferIndex"])
            cls = str(rec["failureType"])
            dies = rec["results"]
            x = [int(d["x"]) for d in dies]
            y = [int(d["y"]) for d in dies]
            b = [int(d["hbin"]) for d in dies]
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendFabError(
                f"WM-811K sample {path}: record #{i} lacks failureType/lotName/waferIndex/results "
                f"or has a malformed die ({exc})"
            ) from exc
        lots += [lot] * len(x)
        wafers += [wafer] * len(x)
        xs += x
        ys += y
        bins += b
        truth.append((lot, wafer, cls))
    die = pl.DataFrame(
        {"lot_id": lots, "wafer_id": wafers, "x": xs, "y": ys, "hbin": bins},
        schema={
            "lot_id": pl.String,
            "wafer_id": pl.String,
            "x": pl.Int32,
            "y": pl.Int32,
            "hbin": pl.Int32,
        },
    )
    truth_df = pl.DataFrame(truth, schema=["lot_id", "wafer_id", "pattern_class"], orient="row")
    if truth_df.select(pl.struct("lot_id", "wafer_id").is_duplicated().any()).item():
        raise BackendFabError(f"WM-811K sample {path}: the same (lotName, waferIndex) twice")
    return die, truth_df


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n`` (95 % for the default ``z``)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def classification_report(y_true, y_pred, labels) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    ``labels``: the classes in display order (rows = truth, columns = prediction); a prediction
    outside ``labels`` (e.g. ``unknown``) counts as wrong and gets its own column.
    """
    y_true = np.asarray(y_true, dtype=object)
    y_pred = np.asarray(y_pred, dtype=object)
    labels = list(labels)
    cols = labels + sorted({str(p) for p in y_pred} - set(labels))
    idx_r = {c: i for i, c in enumerate(labels)}
    idx_c = {c: i for i, c in enumerate(cols)}
    cm = np.zeros((len(labels), len(cols)), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        if t in idx_r:
            cm[idx_r[t], idx_c[str(p)]] += 1
    per_class = {}
    f1s = []
    for i, c in enumerate(labels):
        tp = cm[i, i]
        support = int(cm[i].sum())
        predicted = int(cm[:, i].sum())
        precision = tp / predicted if predicted else float("nan")
        recall = tp / support if support else float("nan")
        f1 = (
            2 * precision * recall / (precision + recall)
            if predicted and support and (precision + recall) > 0
            else 0.0
        )
        if support:
            f1s.append(f1)
        per_class[c] = {
            "precision": None if math.isnan(precision) else float(precision),
            "recall": None if math.isnan(recall) else float(recall),
            "f1": float(f1),
            "support": support,
        }
    n = int(cm.sum())
    correct = int(np.trace(cm[:, : len(labels)]))
    return {
        "n": n,
        "accuracy": correct / n if n else float("nan"),
        "macro_f1": float(np.mean(f1s)) if f1s else float("nan"),
        "per_class": per_class,
        "labels": labels,
        "columns": cols,
        "confusion": cm.tolist(),
    }


def _calibration(proba: np.ndarray, y_idx: np.ndarray, bins: int = 10) -> dict:
    conf = proba.max(axis=1)
    hit = proba.argmax(axis=1) == y_idx
    ece = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        sel = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs(hit[sel].mean() - conf[sel].mean())
    logloss = float(-np.mean(np.log(np.clip(proba[np.arange(y_idx.size), y_idx], 1e-12, 1.0))))
    return {"ece": float(ece), "log_loss": logloss, "mean_confidence": float(conf.mean())}


def _threshold_table(proba: np.ndarray, y_idx: np.ndarray) -> list[dict]:
    conf = proba.max(axis=1)
    hit = proba.argmax(axis=1) == y_idx
    rows = []
    for t in _THRESHOLDS:
        covered = conf >= t
        rows.append(
            {
                "threshold": t,
                "coverage": float(covered.mean()),
                "accuracy_covered": float(hit[covered].mean()) if covered.any() else None,
            }
        )
    return rows


def cross_validate_synthetic(
    n_per_class: int = EVAL_N_PER_CLASS,
    folds: int = 5,
    seed: int = 0,
    *,
    params: dict | None = None,
    progress=None,
) -> dict:
    """Lot-disjoint cross-validation of the shipped model's recipe on fresh synthetic maps.

    ``params`` overrides the classifier's parameters (default: the shipped model's). Returns a
    :func:`classification_report` with ``calibration``, ``thresholds`` and the set's size added.
    """
    from sklearn.model_selection import GroupKFold

    from backend_fab.patterns.model import DEFAULT_PARAMS, WaferPatternClassifier
    from backend_fab.patterns.training import generate_maps
    from backend_fab.synth.patterns import PATTERN_CLASSES

    if folds < 2:
        raise BackendFabError(f"eval-patterns: --folds must be at least 2, got {folds}")
    t0 = time.perf_counter()
    maps = generate_maps(n_per_class, seed=10_000 + seed)
    X = maps.features()
    y = maps.label
    groups = maps.lot_id
    n_lots = np.unique(groups).size
    if n_lots < folds:
        raise BackendFabError(
            f"eval-patterns: {n_lots} synthetic lots cannot fill {folds} lot-disjoint folds"
        )
    classes = np.array(sorted(set(y)))
    proba = np.zeros((y.size, classes.size))
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (train, test) in enumerate(splitter.split(X, y, groups)):
        clf = WaferPatternClassifier(**{**DEFAULT_PARAMS, **(params or {})}, random_state=seed + k)
        clf.fit(X[train], y[train])
        p = clf.predict_proba(X[test])
        cols = np.searchsorted(classes, clf.classes_)
        proba[np.ix_(test, cols)] = p
        if progress is not None:
            progress(k + 1, folds)
    y_idx = np.searchsorted(classes, y)
    pred = classes[proba.argmax(axis=1)]
    report = classification_report(y, pred, list(PATTERN_CLASSES))
    report.update(
        {
            "maps": int(y.size),
            "lots": int(n_lots),
            "folds": int(folds),
            "n_per_class": int(n_per_class),
            "seed": int(seed),
            "calibration": _calibration(proba, y_idx),
            "thresholds": _threshold_table(proba, y_idx),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    )
    return report


def evaluate_real_maps(path, *, model=None, threshold: float | None = None) -> dict:
    """Classify the real maps of a WM-811K sample file and score them against their labels."""
    from backend_fab.patterns.classify import DEFAULT_THRESHOLD, classify_wafers, resolve_model
    from backend_fab.synth.patterns import PATTERN_CLASSES

    clf = resolve_model(model)
    die, truth = load_wm811k_sample(path)
    got = (
        classify_wafers(die, model=clf, threshold=None)
        .collect()
        .join(truth, on=["lot_id", "wafer_id"], how="inner", suffix="_true")
    )
    y_true = got["pattern_class_true"].to_numpy()
    y_pred = got["pattern_class"].to_numpy()
    report = classification_report(y_true, y_pred, list(PATTERN_CLASSES))
    k = int((y_true == y_pred).sum())
    n = int(y_true.size)
    lo, hi = wilson_interval(k, n)
    t = DEFAULT_THRESHOLD if threshold is None else threshold
    covered = got["probability"].to_numpy() >= t
    report.update(
        {
            "file": str(path),
            "exact_match": k / n if n else float("nan"),
            "exact_match_ci95": [lo, hi],
            "correct": k,
            "anchor_rule_based": RULE_BASED_ANCHOR,
            "at_threshold": {
                "threshold": t,
                "coverage": float(covered.mean()) if n else None,
                "accuracy_covered": (
                    float((y_true[covered] == y_pred[covered]).mean()) if covered.any() else None
                ),
            },
            "maps": [
                {
                    "lot_id": r["lot_id"],
                    "wafer_id": r["wafer_id"],
                    "truth": r["pattern_class_true"],
                    "predicted": r["pattern_class"],
                    "probability": round(r["probability"], 4),
                    "runner_up": r["runner_up"],
                }
                for r in got.iter_rows(named=True)
            ],
        }
    )
    return report


def plot_report(report: dict, title: str, path) -> Path:
    """Confusion matrix (row-normalised colours, counts written) and per-class precision /
    recall bars, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    labels = report["labels"]
    cols = report["columns"]
    cm = np.asarray(report["confusion"], dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 6), gridspec_kw={"width_ratios": [1.1, 1]})
    ax1.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax1.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax1.set_yticks(range(len(labels)), labels)
    ax1.set_xlabel("predicted")
    ax1.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax1.text(
                    j,
                    i,
                    int(cm[i, j]),
                    ha="center",
                    va="center",
                    color="white" if norm[i, j] > 0.5 else "black",
                    fontsize=8,
                )
    ax1.set_title("confusion matrix (rows: true class)")
    prec = [report["per_class"][c]["precision"] or 0.0 for c in labels]
    rec = [report["per_class"][c]["recall"] or 0.0 for c in labels]
    pos = np.arange(len(labels))
    ax2.barh(pos - 0.2, prec, height=0.4, label="precision", color="#4c72b0")
    ax2.barh(pos + 0.2, rec, height=0.4, label="recall", color="#dd8452")
    ax2.set_yticks(pos, labels)
    ax2.invert_yaxis()
    ax2.set_xlim(0, 1)
    ax2.set_xlabel("per-class precision / recall")
    ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def eval_patterns_command(
    out: Path,
    wm811k: Path | None,
    folds: int,
    seed: int,
    quiet: bool,
    *,
    n_per_class: int = EVAL_N_PER_CLASS,
) -> int:
    """The ``eval-patterns`` command; returns the exit code (0 done, 2 bad options or input)."""
    from backend_fab.patterns.model import default_model

    def say(msg: str) -> None:
        if not quiet:
            print(msg, flush=True)

    out = Path(out)
    if folds < 2:
        raise BackendFabError(f"eval-patterns: --folds must be at least 2, got {folds}")
    if wm811k is not None and not Path(wm811k).is_file():
        raise BackendFabError(f"eval-patterns: --wm811k {wm811k} is not a file")
    real_path = Path(wm811k) if wm811k is not None else default_wm811k_path()
    model = default_model()
    say(
        f"synthetic lot-disjoint {folds}-fold cross-validation on {n_per_class} maps per class "
        f"(seed {seed}) ..."
    )
    cv = cross_validate_synthetic(
        n_per_class,
        folds,
        seed,
        progress=(lambda k, n: say(f"  fold {k}/{n} done")),
    )
    say(
        f"  accuracy {_fmt(cv['accuracy'])}, macro-F1 {_fmt(cv['macro_f1'])}, "
        f"ECE {_fmt(cv['calibration']['ece'])}"
    )
    result = {
        "model": {
            "temperature": model.temperature_,
            "oob_score": model.oob_score_,
            "n_trees": int(model.tree_offsets_.size - 1),
            "training": getattr(model, "info_", {}),
        },
        "synthetic_cv": cv,
    }
    out.mkdir(parents=True, exist_ok=True)
    plot_report(
        cv,
        f"synthetic maps, lot-disjoint {folds}-fold CV: accuracy {cv['accuracy']:.3f}, "
        f"macro-F1 {cv['macro_f1']:.3f} ({cv['maps']} maps, {cv['lots']} lots)",
        out / "synthetic-cv.png",
    )
    if real_path is None:
        result["wm811k_sample"] = {
            "skipped": "no WM-811K sample found (pass --wm811k; the default is "
            "../shared/data/wm811k/wm811k-sample.json)"
        }
        say("real maps: skipped (no WM-811K sample found; pass --wm811k)")
    else:
        real = evaluate_real_maps(real_path, model=model)
        result["wm811k_sample"] = real
        lo, hi = real["exact_match_ci95"]
        plot_report(
            real,
            f"real WM-811K maps (never trained on): exact match {real['correct']}/{real['n']} = "
            f"{real['exact_match']:.3f} (95 % CI {lo:.2f}-{hi:.2f}; rule-based anchor 0.64)",
            out / "wm811k-sample.png",
        )
        say(
            f"real WM-811K maps: exact match {real['correct']}/{real['n']} = "
            f"{_fmt(real['exact_match'])} (Wilson 95 % CI {lo:.2f}-{hi:.2f}); "
            f"anchor {RULE_BASED_ANCHOR:.2f}"
        )
        for c, v in real["per_class"].items():
            say(f"  {c:10s} recall {_fmt(v['recall'])} ({v['support']} maps)")
    (out / "patterns-eval.json").write_text(json.dumps(result, indent=2, default=_json_default))
    say(f"wrote {out / 'patterns-eval.json'}")
    return 0


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
