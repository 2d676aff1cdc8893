"""Statistical yield and bin limits (SYL/SBL, AEC-Q002) and static PAT limits (AEC-Q001).

Limit sets are rows of the lake's ``limits`` table (``schema.LIMITS``): one row per product,
limit type ("SYL", "SBL", "SPAT"), key ("yield", "hbin:5", "test:1200"), method and version, with
two levels, the centre and spread they came from, the data window, the validity window and the
parameters (JSON). :func:`save_limits` writes a new version and closes the previous one;
:func:`current_limits` picks the version valid at a time; :func:`evaluate_limits` says which
level a lot or wafer hits and why.

SYL/SBL (DOMAIN.md §1.6): x_i = yield (or bin-b fail fraction) of each lot or wafer in the history
(at least ``min_lots`` lots, 6 by default). Level 1 (engineering review) and level 2 (hold/MRB)
sit at k1 = 3 and k2 = 4 spreads from the centre: SYL below, SBL above. Methods:

* ``normal``: mean ∓ k·σ (sample standard deviation);
* ``robust``: median ∓ k·1.4826·MAD (or IQR/1.349 with ``robust="iqr"``);
* ``percentile``: the empirical α and 1-α quantiles (linear interpolation), α = Φ(-k);
* ``binomial``: per wafer or lot size n, the count limit min{c : P(X >= c | n, p̄) <= α} with the
  pooled p̄ and α = Φ(-k) (0.00135 for k = 3); SYL on the lower tail of the good count;
* ``beta_binomial``: the same with the method-of-moments intra-class correlation ρ, for the
  lot-to-lot variation a binomial ignores;
* ``poisson``: count limit qpois(1-α, n·p̄), for rare bins (Park & Kim 2004);
* ``auto``: robust where the key's spread is positive and its median count per point is at least
  5, Poisson otherwise (rare bins).

Count-based methods store their level bounds as fractions at the median size ``n_ref`` of the
history; evaluation recomputes them at the actual n.

Static PAT (DOMAIN.md §2.1): robust mean (median) ± 6 robust σ ((Q3 - Q1)/1.35) of good parts over
at least 6 lots; tests with IQR = 0 are skipped; optional Cpk gates; limits clamped inside the
spec limits at wafer sort.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from backend_fab import bins as _bins
from backend_fab.errors import BackendFabError, LimitsError

__all__ = [
    "METHODS",
    "LimitSet",
    "current_limits",
    "evaluate_limits",
    "history_points",
    "limit_levels",
    "load_limits",
    "save_limits",
    "static_pat_limits",
    "syl_sbl_limits",
    "test_key",
]

METHODS = ("normal", "robust", "percentile", "binomial", "beta_binomial", "poisson", "auto")
_COUNT_METHODS = ("binomial", "beta_binomial", "poisson")


def _alpha(k: float) -> float:
    """Upper-tail probability of a standard normal beyond k: the k-sigma equivalent α."""
    from scipy import stats

    return float(stats.norm.sf(k))


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _limits_schema() -> dict:
    from backend_fab import schema

    return schema.table("limits").polars_schema


def test_key(test_num: int, pin: int | None = None) -> str:
    """The ``key`` of a test's limits: "test:1200", or "test:1200:pin:3" for a multi-pin test."""
    if pin is None or pin < 0:
        return f"test:{int(test_num)}"
    return f"test:{int(test_num)}:pin:{int(pin)}"


@dataclass(frozen=True)
class LimitSet:
    """Limits computed from a history: ``limits`` (rows of the ``limits`` table, version 1 until
    :func:`save_limits` assigns the next one) and ``skipped`` (product, limit_type, key, reason)
    for every key that got no limit."""

    limits: pl.DataFrame
    skipped: pl.DataFrame

    def __repr__(self) -> str:
        return f"LimitSet({self.limits.height} limits, {self.skipped.height} skipped)"


def _skipped_frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "product": pl.String,
            "limit_type": pl.String,
            "key": pl.String,
            "reason": pl.String,
        },
        orient="row",
    )


# --- history ----------------------------------------------------------------------------------


def history_points(
    die: pl.LazyFrame,
    *,
    level: str = "lot",
    kind: str = "hbin",
    pass_bins: Sequence[int] | None = None,
    which: str = "final",
    runs: pl.LazyFrame | None = None,
    layouts: pl.LazyFrame | None = None,
    basis: str = "tested",
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """The data points of SYL/SBL: one per lot (or wafer).

    Returns ``(points, bin_counts)``: ``points`` has product, lot_id (wafer_id), start_time (null
    without ``runs``), ``n`` (the denominator: die tested, or gross die with ``basis="gross"``),
    ``n_good``; ``bin_counts`` has the same keys plus ``bin`` and ``count`` of failing bins.
    """
    if level not in ("lot", "wafer"):
        raise BackendFabError(f"level={level!r}: SYL/SBL points are per 'lot' or per 'wafer'")
    if basis not in ("tested", "gross"):
        raise BackendFabError(f"basis={basis!r} is unknown; use 'tested' or 'gross'")
    if basis == "gross" and layouts is None:
        raise BackendFabError("basis='gross' needs layouts= (the layouts table, gross_die)")
    keys = _bins.level_keys(level)
    frame = _bins.select_instances(die, which, runs=runs, pass_bins=pass_bins)
    names = frame.collect_schema().names()
    start = (
        pl.col("start_time").min()
        if "start_time" in names
        else pl.lit(None, dtype=pl.Datetime("us", "UTC"))
    )
    points = frame.group_by(keys).agg(
        n_tested=pl.len().cast(pl.Int64),
        n_good=pl.col("good").sum().cast(pl.Int64),
        n_wafers=pl.col("wafer_id").n_unique().cast(pl.Int64),
        start_time=start,
    )
    if basis == "gross":
        gross = layouts.select("product", pl.col("gross_die").cast(pl.Int64))
        points = (
            points.join(gross, on="product", how="left", maintain_order="left")
            .with_columns(n=pl.col("gross_die") * pl.col("n_wafers"))
            .drop("gross_die")
        )
    else:
        points = points.with_columns(n=pl.col("n_tested"))
    counts = (
        frame.filter(~pl.col("good"))
        .group_by(*keys, pl.col(kind).alias("bin"))
        .agg(count=pl.len().cast(pl.Int64))
    )
    return points.sort(keys), counts.sort([*keys, "bin"])


def _window(points: pl.DataFrame, data_from, data_to) -> pl.DataFrame:
    if data_from is None and data_to is None:
        return points
    if points.height and points["start_time"].null_count() == points.height:
        raise BackendFabError("a data window (data_from/data_to) needs runs= for the lot times")
    if data_from is not None:
        points = points.filter(pl.col("start_time") >= _utc(data_from))
    if data_to is not None:
        points = points.filter(pl.col("start_time") < _utc(data_to))
    return points


# --- SYL / SBL --------------------------------------------------------------------------------


def _spread_robust(x: np.ndarray, robust: str) -> tuple[float, float]:
    med = float(np.median(x))
    if robust == "mad":
        return med, float(1.4826 * np.median(np.abs(x - med)))
    q1, q3 = np.quantile(x, [0.25, 0.75])
    return med, float((q3 - q1) / 1.349)


def _key_limits(
    side: str,
    counts: np.ndarray,
    n: np.ndarray,
    method: str,
    k1: float,
    k2: float,
    robust: str,
) -> tuple[dict | None, str | None]:
    """Limits of one key. ``side`` "lo" (SYL: counts are good die) or "hi" (SBL: fail die).

    Returns (fields, None) or (None, reason).
    """
    from scipy import stats

    frac = counts / n
    n_ref = float(np.median(n))
    a1, a2 = _alpha(k1), _alpha(k2)
    params = {"k1": k1, "k2": k2, "alpha1": a1, "alpha2": a2, "n_ref": n_ref}
    pbar = float(counts.sum() / n.sum())
    if method == "auto":
        center, spread = _spread_robust(frac, robust)
        rare = float(np.median(counts if side == "hi" else n - counts)) < 5
        method = "poisson" if (spread <= 0 or rare) and side == "hi" else "robust"
    if method in ("normal", "robust", "percentile"):
        if method == "normal":
            center = float(frac.mean())
            spread = float(frac.std(ddof=1)) if frac.size > 1 else 0.0
        elif method == "robust":
            center, spread = _spread_robust(frac, robust)
            params["robust"] = robust
        else:
            center = float(np.median(frac))
            q1, q3 = np.quantile(frac, [0.25, 0.75])
            spread = float((q3 - q1) / 1.349)
        if method != "percentile" and spread <= 0:
            return None, f"{method} spread is 0 over {frac.size} points (ignore-if-σ=0)"
        if method == "percentile":
            if side == "lo":
                l1, l2 = np.quantile(frac, [a1, a2])
            else:
                l1, l2 = np.quantile(frac, [1 - a1, 1 - a2])
            l1, l2 = float(l1), float(l2)
        elif side == "lo":
            l1, l2 = center - k1 * spread, center - k2 * spread
        else:
            l1, l2 = center + k1 * spread, center + k2 * spread
    else:
        if pbar <= 0 or (side == "lo" and pbar >= 1):
            return None, f"pooled rate {pbar:g} leaves no variation for a {method} limit"
        center = pbar
        if method == "binomial":
            dist = stats.binom(round(n_ref), pbar)
            spread = math.sqrt(pbar * (1 - pbar) / n_ref)
        elif method == "beta_binomial":
            rho = _icc(counts, n, pbar)
            params["rho"] = rho
            spread = math.sqrt(pbar * (1 - pbar) * (1 + (n_ref - 1) * rho) / n_ref)
            dist = _beta_binomial(round(n_ref), pbar, rho)
        else:
            if side == "lo":
                return None, "the Poisson method is for rare fail bins (SBL), not yield"
            dist = stats.poisson(n_ref * pbar)
            spread = math.sqrt(pbar / n_ref)
        l1 = _count_bound(dist, side, a1) / n_ref
        l2 = _count_bound(dist, side, a2) / n_ref
    if side == "lo":
        fields = {"level1_lo": max(l1, 0.0), "level2_lo": max(l2, 0.0)}
    else:
        fields = {"level1_hi": min(l1, 1.0), "level2_hi": min(l2, 1.0)}
    fields.update(center=center, spread=spread, method=method, params=params)
    return fields, None


def _icc(counts: np.ndarray, n: np.ndarray, pbar: float) -> float:
    """Method-of-moments intra-class correlation of a beta-binomial (Kleinman 1973 style)."""
    if counts.size < 2 or pbar <= 0 or pbar >= 1:
        return 0.0
    frac = counts / n
    nbar = float(n.mean())
    s2 = float(np.sum(n * (frac - pbar) ** 2) / (nbar * (counts.size - 1)))
    if nbar <= 1:
        return 0.0
    rho = (s2 / (pbar * (1 - pbar)) - 1.0) / (nbar - 1.0)
    return float(min(max(rho, 0.0), 0.999))


def _beta_binomial(n: int, p: float, rho: float):
    from scipy import stats

    if rho <= 0:
        return stats.binom(n, p)
    s = (1 - rho) / rho
    return stats.betabinom(n, p * s, (1 - p) * s)


def _count_bound(dist, side: str, alpha: float) -> float:
    """Count at which a point is beyond the level: SBL min{c : P(X >= c) <= α};
    SYL max{c : P(X <= c) <= α} (both as counts)."""
    if side == "hi":
        c = float(dist.isf(alpha))  # smallest c with P(X > c) <= α -> P(X >= c + 1) <= α
        return c + 1.0
    c = float(dist.ppf(alpha))  # smallest c with P(X <= c) >= α
    return c - 1.0 if dist.cdf(c) > alpha else c


def syl_sbl_limits(
    die: pl.LazyFrame,
    *,
    runs: pl.LazyFrame | None = None,
    layouts: pl.LazyFrame | None = None,
    product: str | None = None,
    level: str = "lot",
    kind: str = "hbin",
    bins: Sequence[int] | None = None,
    method: str = "auto",
    sbl_method: str | None = None,
    k1: float = 3.0,
    k2: float = 4.0,
    robust: str = "mad",
    min_lots: int = 6,
    min_points: int | None = None,
    pass_bins: Sequence[int] | None = None,
    which: str = "final",
    basis: str = "tested",
    data_from: datetime | None = None,
    data_to: datetime | None = None,
    valid_from: datetime | None = None,
    valid_for: timedelta = timedelta(days=183),
    created_at: datetime | None = None,
) -> LimitSet:
    """SYL and SBL from a history of lots (AEC-Q002; DOMAIN.md §1.6). Collects.

    Parameters
    ----------
    die : canonical die table of the history (every product in it, unless ``product``).
    runs : needed for a data window and to order retests by time.
    level : one data point per "lot" or per "wafer".
    kind, bins : SBL per ``kind`` ("hbin"/"sbin") for ``bins`` (default: every failing bin seen).
    method, sbl_method : one of :data:`METHODS` for SYL and SBL (``sbl_method`` defaults to
        ``method``).
    k1, k2 : level 1 and level 2 widths (k2 > k1).
    min_lots, min_points : history needed per product (points default 6 per lot, 30 per wafer).
    basis : "tested" or "gross" (gross die from ``layouts``).
    data_from, data_to : lots whose first test start lies in [data_from, data_to).
    valid_from, valid_for : validity window of the new limits (default: from ``created_at``, six
        months).

    Raises :class:`LimitsError` when no product in the history has enough lots or points.
    """
    for m in (method, sbl_method or method):
        if m not in METHODS:
            raise BackendFabError(f"method {m!r} is unknown; use one of {', '.join(METHODS)}")
    if not 0 < k1 < k2:
        raise BackendFabError(f"need 0 < k1 < k2 (level 2 beyond level 1), got k1={k1}, k2={k2}")
    if robust not in ("mad", "iqr"):
        raise BackendFabError(f"robust={robust!r} is unknown; use 'mad' or 'iqr'")
    if min_points is None:
        min_points = min_lots if level == "lot" else 30
    created_at = created_at or _now()
    valid_from = valid_from or created_at
    points_lf, counts_lf = history_points(
        die if product is None else die.filter(pl.col("product") == product),
        level=level,
        kind=kind,
        pass_bins=pass_bins,
        which=which,
        runs=runs,
        layouts=layouts,
        basis=basis,
    )
    points = _window(points_lf.collect(), data_from, data_to)
    counts = counts_lf.collect()
    keys = _bins.level_keys(level)
    rows, skipped = [], []
    for (prod,), pts in points.group_by("product", maintain_order=True):
        n_lots = pts["lot_id"].n_unique()
        if n_lots < min_lots or pts.height < min_points:
            skipped.append(
                {
                    "product": prod,
                    "limit_type": "SYL",
                    "key": "*",
                    "reason": f"{n_lots} lots / {pts.height} points in the window; need "
                    f"{min_lots} lots and {min_points} points",
                }
            )
            continue
        pts = pts.filter(pl.col("n") > 0)
        n = pts["n"].to_numpy().astype(np.float64)
        common = {
            "product": prod,
            "scope": level,
            "n_lots": n_lots,
            "n_points": pts.height,
            "data_from": data_from if data_from is not None else pts["start_time"].min(),
            "data_to": data_to if data_to is not None else pts["start_time"].max(),
        }
        base_params = {
            "basis": basis,
            "kind": kind,
            "which": which,
            "pass_bins": None if pass_bins is None else [int(b) for b in pass_bins],
        }
        fields, reason = _key_limits(
            "lo", pts["n_good"].to_numpy().astype(np.float64), n, method, k1, k2, robust
        )
        if fields is None:
            skipped.append({"product": prod, "limit_type": "SYL", "key": "yield", "reason": reason})
        else:
            rows.append(_row(common, "SYL", "yield", fields, base_params))
        pcounts = counts.filter(pl.col("product") == prod)
        bin_list = (
            sorted({int(b) for b in pcounts["bin"].drop_nulls()}) if bins is None else list(bins)
        )
        for b in bin_list:
            per_point = pts.select(keys).join(
                pcounts.filter(pl.col("bin") == b).select(*keys, "count"),
                on=keys,
                how="left",
                maintain_order="left",
                nulls_equal=True,
            )
            c = per_point["count"].fill_null(0).to_numpy().astype(np.float64)
            key = f"{kind}:{b}"
            fields, reason = _key_limits("hi", c, n, sbl_method or method, k1, k2, robust)
            if fields is None:
                skipped.append({"product": prod, "limit_type": "SBL", "key": key, "reason": reason})
            else:
                rows.append(_row(common, "SBL", key, {**fields}, {**base_params, "bin": b}))
    if not rows:
        raise LimitsError(
            "no SYL/SBL limit could be computed: "
            + "; ".join(f"{s['product']} {s['key']}: {s['reason']}" for s in skipped[:5])
            + (" (the history frame is empty)" if not skipped else "")
        )
    frame = _to_limits_frame(rows, valid_from, valid_from + valid_for, created_at)
    return LimitSet(limits=frame, skipped=_skipped_frame(skipped))


def _row(common: dict, limit_type: str, key: str, fields: dict, params: dict) -> dict:
    p = {**params, **fields.pop("params")}
    return {
        **common,
        "limit_type": limit_type,
        "key": key,
        "method": fields.pop("method"),
        "level1_lo": fields.get("level1_lo"),
        "level1_hi": fields.get("level1_hi"),
        "level2_lo": fields.get("level2_lo"),
        "level2_hi": fields.get("level2_hi"),
        "center": fields.get("center"),
        "spread": fields.get("spread"),
        "parameters": json.dumps(p, sort_keys=True, separators=(",", ":")),
    }


def _to_limits_frame(rows: list[dict], valid_from, valid_to, created_at) -> pl.DataFrame:
    from backend_fab import schema

    cols = _limits_schema()
    extra = {"version": 1, "valid_from": valid_from, "valid_to": valid_to, "created_at": created_at}
    data = {c: [extra[c] if c in extra else r.get(c) for r in rows] for c in cols}
    return schema.validate("limits", pl.DataFrame(data, schema=cols))


# --- storage ----------------------------------------------------------------------------------


def save_limits(lake, limits: LimitSet | pl.DataFrame) -> pl.DataFrame:
    """Write limits to the lake as the next version of each (product, limit_type, key, method).

    The previous version's ``valid_to`` is cut to the new ``valid_from`` (the audit trail keeps
    every version). Returns the rows written, with their versions.
    """
    from backend_fab import schema

    frame = limits.limits if isinstance(limits, LimitSet) else limits
    frame = schema.validate("limits", frame)
    if frame.height == 0:
        raise LimitsError("save_limits: the limit set is empty; nothing to write")
    ident = ["product", "limit_type", "key", "method"]
    old = lake.scan("limits").collect()
    if old.height:
        latest = old.group_by(ident).agg(pl.col("version").max().alias("_v"))
        frame = (
            frame.join(latest, on=ident, how="left", maintain_order="left")
            .with_columns(version=(pl.col("_v").fill_null(0) + 1).cast(pl.Int32))
            .drop("_v")
        )
        starts = frame.select(*ident, pl.col("valid_from").alias("_from"))
        closing = (
            old.join(starts, on=ident, how="inner")
            .filter(pl.col("valid_to").is_null() | (pl.col("valid_to") > pl.col("_from")))
            .with_columns(valid_to=pl.col("_from"))
            .drop("_from")
        )
        if closing.height:
            lake.merge("limits", schema.validate("limits", closing))
    else:
        frame = frame.with_columns(version=pl.lit(1, dtype=pl.Int32))
    frame = schema.validate("limits", frame)
    lake.merge("limits", frame)
    return frame


def current_limits(
    limits: pl.DataFrame | pl.LazyFrame, *, at: datetime | None = None
) -> pl.DataFrame:
    """The limit rows in force: valid at ``at`` (any time when None), and of those the latest
    ``valid_from`` then the highest version per (product, limit_type, key, scope)."""
    frame = limits.collect() if isinstance(limits, pl.LazyFrame) else limits
    if at is not None:
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        frame = frame.filter(
            (pl.col("valid_from").is_null() | (pl.col("valid_from") <= at))
            & (pl.col("valid_to").is_null() | (pl.col("valid_to") > at))
        )
    ident = ["product", "limit_type", "key", "scope"]
    return (
        frame.sort([*ident, "valid_from", "version"], descending=[False] * 4 + [True, True])
        .group_by(ident, maintain_order=True)
        .first()
        .select(frame.columns)
    )


def load_limits(
    lake,
    *,
    product: str | None = None,
    limit_type: str | None = None,
    at: datetime | None = None,
) -> pl.DataFrame:
    """The limits in force from the lake (see :func:`current_limits`), optionally filtered."""
    lf = lake.scan("limits")
    if product is not None:
        lf = lf.filter(pl.col("product") == product)
    if limit_type is not None:
        lf = lf.filter(pl.col("limit_type") == limit_type)
    return current_limits(lf.collect(), at=at)


# --- evaluation -------------------------------------------------------------------------------


def evaluate_limits(
    die: pl.LazyFrame,
    limits: pl.DataFrame | pl.LazyFrame,
    *,
    pass_bins: Sequence[int] | None = None,
    which: str = "final",
    runs: pl.LazyFrame | None = None,
    layouts: pl.LazyFrame | None = None,
    at: datetime | None = None,
) -> pl.DataFrame:
    """Evaluate lots/wafers of ``die`` against SYL/SBL limits. Collects.

    Each limit row applies at its ``scope`` (lot or wafer) to die of its product; the basis, bin
    kind and pass bins recorded in its parameters are used unless ``pass_bins`` is given.
    Returns one row per (product, lot_id, wafer_id ("" for a lot), limit_type, key): ``n``,
    ``count`` (good die for SYL, die in the bin for SBL), ``value`` (fraction), ``level1`` and
    ``level2`` (the bounds at this n), ``p_value`` (count methods), ``level`` (0 within, 1 beyond
    level 1, 2 beyond level 2), ``version``, ``method`` and a ``reason`` sentence.
    """
    lim = current_limits(limits, at=at).filter(pl.col("limit_type").is_in(["SYL", "SBL"]))
    out_rows: list[dict] = []
    cache: dict = {}
    for row in lim.iter_rows(named=True):
        params = json.loads(row["parameters"] or "{}")
        kind = params.get("kind", "hbin")
        basis = params.get("basis", "tested")
        pb = pass_bins if pass_bins is not None else params.get("pass_bins")
        ck = (row["scope"], kind, basis, tuple(pb) if pb else None, row["product"])
        if ck not in cache:
            pts, cnt = history_points(
                die.filter(pl.col("product") == row["product"]),
                level=row["scope"],
                kind=kind,
                pass_bins=pb,
                which=which,
                runs=runs,
                layouts=layouts,
                basis=basis,
            )
            cache[ck] = (pts.collect(), cnt.collect())
        pts, cnt = cache[ck]
        keys = _bins.level_keys(row["scope"])
        if row["limit_type"] == "SYL":
            counts = pts["n_good"].to_numpy().astype(np.float64)
        else:
            b = int(row["key"].split(":")[1])
            joined = pts.select(keys).join(
                cnt.filter(pl.col("bin") == b).select(*keys, "count"),
                on=keys,
                how="left",
                maintain_order="left",
                nulls_equal=True,
            )
            counts = joined["count"].fill_null(0).to_numpy().astype(np.float64)
        n = pts["n"].to_numpy().astype(np.float64)
        levels = _levels(row, params, counts, n)
        for i, prow in enumerate(pts.iter_rows(named=True)):
            out_rows.append(
                {
                    "product": row["product"],
                    "lot_id": prow["lot_id"],
                    "wafer_id": prow.get("wafer_id") or "",
                    "limit_type": row["limit_type"],
                    "key": row["key"],
                    "scope": row["scope"],
                    "method": row["method"],
                    "version": row["version"],
                    "n": int(n[i]),
                    "count": int(counts[i]),
                    "value": float(counts[i] / n[i]) if n[i] > 0 else None,
                    "level1": levels["level1"][i],
                    "level2": levels["level2"][i],
                    "p_value": levels["p"][i],
                    "level": int(levels["level"][i]),
                    "reason": _reason(row, params, counts[i], n[i], levels, i),
                }
            )
    schema = {
        "product": pl.String,
        "lot_id": pl.String,
        "wafer_id": pl.String,
        "limit_type": pl.String,
        "key": pl.String,
        "scope": pl.String,
        "method": pl.String,
        "version": pl.Int32,
        "n": pl.Int64,
        "count": pl.Int64,
        "value": pl.Float64,
        "level1": pl.Float64,
        "level2": pl.Float64,
        "p_value": pl.Float64,
        "level": pl.Int16,
        "reason": pl.String,
    }
    out = pl.DataFrame(out_rows, schema=schema, orient="row")
    return out.sort(["product", "lot_id", "wafer_id", "limit_type", "key"])


def _levels(row: dict, params: dict, counts: np.ndarray, n: np.ndarray) -> dict:
    from scipy import stats

    side = "lo" if row["limit_type"] == "SYL" else "hi"
    m = counts.size
    level = np.zeros(m, dtype=np.int16)
    l1 = np.full(m, np.nan)
    l2 = np.full(m, np.nan)
    p = np.full(m, np.nan)
    method = row["method"]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(n > 0, counts / np.maximum(n, 1), np.nan)
    if method in _COUNT_METHODS:
        pbar = row["center"]
        a1, a2 = params.get("alpha1", _alpha(3)), params.get("alpha2", _alpha(4))
        for i in range(m):
            ni = round(n[i])
            if ni <= 0:
                continue
            if method == "binomial":
                dist = stats.binom(ni, pbar)
            elif method == "beta_binomial":
                dist = _beta_binomial(ni, pbar, params.get("rho", 0.0))
            else:
                dist = stats.poisson(ni * pbar)
            if side == "hi":
                p[i] = float(dist.sf(counts[i] - 1)) if counts[i] > 0 else 1.0
            else:
                p[i] = float(dist.cdf(counts[i]))
            l1[i] = _count_bound(dist, side, a1) / ni
            l2[i] = _count_bound(dist, side, a2) / ni
            level[i] = 2 if p[i] <= a2 else 1 if p[i] <= a1 else 0
    else:
        l1[:] = row["level1_lo"] if side == "lo" else row["level1_hi"]
        l2[:] = row["level2_lo"] if side == "lo" else row["level2_hi"]
        if side == "lo":
            level = np.where(frac < l2, 2, np.where(frac < l1, 1, 0)).astype(np.int16)
        else:
            level = np.where(frac > l2, 2, np.where(frac > l1, 1, 0)).astype(np.int16)
    as_list = lambda a: [None if not np.isfinite(v) else float(v) for v in a]  # noqa: E731
    return {"level": level, "level1": as_list(l1), "level2": as_list(l2), "p": as_list(p)}


def _reason(row: dict, params: dict, count: float, n: float, levels: dict, i: int) -> str:
    what = "yield" if row["limit_type"] == "SYL" else f"bin {row['key']}"
    value = count / n if n > 0 else float("nan")
    lv = int(levels["level"][i])
    how = (
        f"{row['method']}, k1={params.get('k1')}, k2={params.get('k2')}, "
        f"{row['n_lots']} lots, v{row['version']}"
    )
    if lv == 0:
        return f"{what} {value:.2%} within {row['limit_type']} limits ({how})"
    bound = levels[f"level{lv}"][i]
    word = "below" if row["limit_type"] == "SYL" else "above"
    extra = f", p={levels['p'][i]:.2g}" if levels["p"][i] is not None else ""
    return (
        f"{what} {value:.2%} ({int(count)}/{int(n)}) {word} {row['limit_type']}{lv} "
        f"{bound:.2%} ({how}{extra})"
    )


def limit_levels(evaluation: pl.DataFrame) -> pl.DataFrame:
    """Worst SYL and SBL level per (product, lot_id, wafer_id) of an :func:`evaluate_limits`
    frame, with the key and reason of the worst finding (null when every limit is met): what
    the nightly ``scores`` table stores."""
    ev = evaluation.sort(
        ["product", "lot_id", "wafer_id", "level", "limit_type", "key"],
        descending=[False, False, False, True, False, False],
    )
    keys = ["product", "lot_id", "wafer_id"]
    return (
        ev.group_by(keys, maintain_order=True)
        .agg(
            syl_level=pl.col("level").filter(pl.col("limit_type") == "SYL").max().fill_null(0),
            sbl_level=pl.col("level").filter(pl.col("limit_type") == "SBL").max().fill_null(0),
            worst_key=pl.col("key").first(),
            worst_reason=pl.col("reason").first(),
        )
        .with_columns(pl.col("syl_level", "sbl_level").cast(pl.Int16))
        .with_columns(
            # nothing to report when every limit is met
            pl.when(pl.max_horizontal("syl_level", "sbl_level") > 0).then(pl.col(c)).alias(c)
            for c in ("worst_key", "worst_reason")
        )
        .sort(keys)
    )


# --- static PAT limits ------------------------------------------------------------------------


def static_pat_limits(
    results: pl.LazyFrame,
    die: pl.LazyFrame,
    *,
    tests: pl.LazyFrame | None = None,
    runs: pl.LazyFrame | None = None,
    product: str | None = None,
    test_nums: Sequence[int] | None = None,
    k: float = 6.0,
    min_lots: int = 6,
    min_parts: int = 30,
    ignore_iqr0: bool = True,
    cpk_min: float | None = None,
    cpk_max: float | None = None,
    stick_within_spec: bool = True,
    pass_bins: Sequence[int] | None = None,
    data_from: datetime | None = None,
    data_to: datetime | None = None,
    valid_from: datetime | None = None,
    valid_for: timedelta = timedelta(days=183),
    created_at: datetime | None = None,
) -> LimitSet:
    """Static PAT limits from history (AEC-Q001 §; DOMAIN.md §2.1). Collects.

    Population: results of good final die (``pass_bins`` or the PRR pass flag) per product and
    test (pin), over at least ``min_lots`` lots and ``min_parts`` values. Limits: median ±
    ``k`` · (Q3 - Q1)/1.35 (linear quantiles), clamped inside the spec limits (``tests``:
    lo_spec/hi_spec, else lo_limit/hi_limit) when ``stick_within_spec``. Skipped, with a reason:
    tests with IQR = 0 (``ignore_iqr0``), Cpk below ``cpk_min`` (not a PAT candidate) or above
    ``cpk_max``. Rows have limit_type "SPAT", key :func:`test_key`, method "robust", level 1 =
    the limits (level 2 empty), ``center`` = median, ``spread`` = robust σ.
    """
    if k <= 0:
        raise BackendFabError(f"k must be positive, got {k!r}")
    created_at = created_at or _now()
    valid_from = valid_from or created_at
    d = _bins.select_instances(die, "final", runs=runs, pass_bins=pass_bins).filter(pl.col("good"))
    if product is not None:
        d = d.filter(pl.col("product") == product)
    names = d.collect_schema().names()
    dcols = ["run_id", "part_seq", "product", "lot_id"]
    if "start_time" in names:
        dcols.append("start_time")
    d = d.select(dcols)
    if data_from is not None or data_to is not None:
        if "start_time" not in names:
            raise BackendFabError("a data window (data_from/data_to) needs runs=")
        if data_from is not None:
            d = d.filter(pl.col("start_time") >= _utc(data_from))
        if data_to is not None:
            d = d.filter(pl.col("start_time") < _utc(data_to))
    r = results.select("run_id", "part_seq", "test_num", "pin", "value").filter(
        pl.col("value").is_not_null() & pl.col("value").is_not_nan()
    )
    if test_nums is not None:
        r = r.filter(pl.col("test_num").is_in([int(t) for t in test_nums]))
    joined = r.join(d, on=["run_id", "part_seq"], how="inner").with_columns(
        pl.col("pin").fill_null(-1)
    )
    v = pl.col("value")
    stats_lf = joined.group_by("product", "test_num", "pin").agg(
        n_points=pl.len().cast(pl.Int64),
        n_lots=pl.col("lot_id").n_unique().cast(pl.Int64),
        q1=v.quantile(0.25, "linear"),
        median=v.quantile(0.5, "linear"),
        q3=v.quantile(0.75, "linear"),
        mean=v.mean(),
        std=v.std(),
        data_from=pl.col("start_time").min() if "start_time" in dcols else pl.lit(None),
        data_to=pl.col("start_time").max() if "start_time" in dcols else pl.lit(None),
    )
    st = stats_lf.sort("product", "test_num", "pin").collect()
    spec = _spec_limits(tests)
    rows, skipped = [], []
    for s in st.iter_rows(named=True):
        key = test_key(s["test_num"], s["pin"])
        base = {"product": s["product"], "limit_type": "SPAT", "key": key}
        if s["n_lots"] < min_lots or s["n_points"] < min_parts:
            skipped.append(
                {
                    **base,
                    "reason": f"{s['n_lots']} lots / {s['n_points']} good values; need "
                    f"{min_lots} lots and {min_parts} values",
                }
            )
            continue
        iqr = s["q3"] - s["q1"]
        if iqr <= 0 and ignore_iqr0:
            skipped.append({**base, "reason": "IQR = 0 (ignored, AEC-Q001 robust sigma undefined)"})
            continue
        lo_spec, hi_spec = spec.get(s["test_num"], (None, None))
        cpk = _cpk(s["mean"], s["std"], lo_spec, hi_spec)
        if cpk_min is not None and (cpk is None or cpk < cpk_min):
            skipped.append({**base, "reason": f"Cpk {cpk} below {cpk_min}: not a PAT candidate"})
            continue
        if cpk_max is not None and cpk is not None and cpk > cpk_max:
            skipped.append({**base, "reason": f"Cpk {cpk:.3g} above {cpk_max}: ignored"})
            continue
        sigma = iqr / 1.35
        lo, hi = s["median"] - k * sigma, s["median"] + k * sigma
        if stick_within_spec:
            if lo_spec is not None:
                lo = max(lo, lo_spec)
            if hi_spec is not None:
                hi = min(hi, hi_spec)
        params = {
            "k": k,
            "robust_sigma": "iqr/1.35",
            "lo_spec": lo_spec,
            "hi_spec": hi_spec,
            "cpk": cpk,
            "stick_within_spec": stick_within_spec,
            "test_num": int(s["test_num"]),
            "pin": int(s["pin"]),
            "pass_bins": None if pass_bins is None else [int(b) for b in pass_bins],
        }
        rows.append(
            {
                **base,
                "method": "robust",
                "scope": "product",
                "level1_lo": lo,
                "level1_hi": hi,
                "level2_lo": None,
                "level2_hi": None,
                "center": s["median"],
                "spread": sigma,
                "n_lots": s["n_lots"],
                "n_points": s["n_points"],
                "data_from": data_from if data_from is not None else s["data_from"],
                "data_to": data_to if data_to is not None else s["data_to"],
                "parameters": json.dumps(params, sort_keys=True, separators=(",", ":")),
            }
        )
    frame = _to_limits_frame(rows, valid_from, valid_from + valid_for, created_at)
    return LimitSet(limits=frame, skipped=_skipped_frame(skipped))


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _cpk(mean, std, lo, hi) -> float | None:
    if mean is None or std is None or not std > 0 or (lo is None and hi is None):
        return None
    sides = []
    if lo is not None:
        sides.append(mean - lo)
    if hi is not None:
        sides.append(hi - mean)
    return float(min(sides) / (3 * std))


def _spec_limits(tests: pl.LazyFrame | pl.DataFrame | None) -> dict[int, tuple]:
    """Spec limits per test number: lo_spec/hi_spec when set, else the test limits; the most
    common value across runs."""
    if tests is None:
        return {}
    t = tests.collect() if isinstance(tests, pl.LazyFrame) else tests
    if t.height == 0:
        return {}
    t = t.with_columns(
        _lo=pl.coalesce("lo_spec", "lo_limit"), _hi=pl.coalesce("hi_spec", "hi_limit")
    )
    agg = (
        t.group_by("test_num", "_lo", "_hi")
        .agg(_n=pl.len())
        .sort(
            ["test_num", "_n", "_lo", "_hi"],
            descending=[False, True, False, False],
            nulls_last=True,
        )
        .group_by("test_num", maintain_order=True)
        .first()
    )
    out = {}
    for row in agg.iter_rows(named=True):
        lo, hi = row["_lo"], row["_hi"]
        lo = None if lo is None or not math.isfinite(lo) else float(lo)
        hi = None if hi is None or not math.isfinite(hi) else float(hi)
        out[int(row["test_num"])] = (lo, hi)
    return out
