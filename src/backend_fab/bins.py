"""Yield rollups, bin Paretos, retest and recovery, stacked maps, site-to-site and trend charts.

Every pipeline takes the canonical ``die`` table (``schema.DIE``) as a :class:`polars.LazyFrame`
and returns a LazyFrame (nothing is collected inside); :func:`site_comparison` and the small
statistics helpers work on collected data and say so.

Definitions follow DOMAIN.md §1:

* A *unit* is one die position of a wafer, ``(product, lot_id, wafer_id, x, y)``; a part without
  coordinates (final test) is identified by ``part_id`` instead (or by its own
  ``(run_id, part_seq)`` when it has neither). When ``runs`` is given the insertion is part of the
  unit too (WS1 and WS2 are separate tests of the same die).
* A unit's *instances* are ordered by ``retest_index`` (null counts as 0), then the run's
  ``start_time`` (when ``runs`` is given), then ``run_id`` and ``part_seq``. The first instance is
  the first-pass result; the final instance is the last one not marked ``final = false`` by the
  reader (a retest supersedes what came before it; STDF PRR ``PART_FLG`` bits 0/1).
* A die is *good* when its hard bin is in ``pass_bins``; with ``pass_bins=None`` the tester's PRR
  pass flag (``passed``) decides, and a null flag falls back to ``hbin == 1``.

Yield on a tested basis is ``n_good / n_tested``; on a gross-die basis the denominator is the
layout's gross die count times the wafers tested (``layouts`` table, DOMAIN.md §1.1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from backend_fab.errors import BackendFabError

__all__ = [
    "LEVELS",
    "SiteComparison",
    "bh_adjust",
    "bin_names",
    "bin_pareto",
    "cmh_test",
    "control_chart",
    "good_expr",
    "level_keys",
    "mantel_haenszel",
    "poisson_binomial_sf",
    "resolve_retests",
    "retest_recovery",
    "reticle_positions",
    "select_instances",
    "site_comparison",
    "stacked_hot_spots",
    "stacked_map",
    "wafer_zones",
    "yield_summary",
    "yield_trend",
]

#: Aggregation levels and the key columns they group by.
LEVELS: dict[str, tuple[str, ...]] = {
    "wafer": ("product", "lot_id", "wafer_id"),
    "lot": ("product", "lot_id"),
    "product": ("product",),
    "all": (),
}

#: Columns of ``runs`` that a die row can borrow (its run's context).
RUN_COLUMNS = (
    "insertion",
    "temperature",
    "tester",
    "tester_type",
    "node",
    "program",
    "program_rev",
    "retest_code",
    "facility",
    "start_time",
    "finish_time",
)

BIN_KINDS = {"hbin": "H", "sbin": "S"}


# --- small shared helpers --------------------------------------------------------------------


def level_keys(level: str, by: Sequence[str] = ()) -> list[str]:
    """Group keys for ``level`` ("wafer", "lot", "product", "all") plus the extra ``by`` columns."""
    if level not in LEVELS:
        raise BackendFabError(
            f"unknown level {level!r}; use one of {', '.join(LEVELS)} (and `by=` for more keys)"
        )
    keys = list(LEVELS[level])
    for col in by:
        if col not in keys:
            keys.append(col)
    return keys


def good_expr(pass_bins: Sequence[int] | None = None, kind: str = "hbin") -> pl.Expr:
    """Boolean expression: is the die good? ``pass_bins`` of ``kind``, else the PRR pass flag."""
    _check_kind(kind)
    if pass_bins is not None:
        bins = [int(b) for b in pass_bins]
        if not bins:
            raise BackendFabError("pass_bins is empty: give at least one passing bin (usually 1)")
        return pl.col(kind).is_in(bins).fill_null(False)
    return pl.coalesce(pl.col("passed"), (pl.col("hbin") == 1)).fill_null(False)


def _check_kind(kind: str) -> None:
    if kind not in BIN_KINDS:
        raise BackendFabError(f"bin kind {kind!r} is unknown; use 'hbin' or 'sbin'")


def _require(frame: pl.LazyFrame, columns: Sequence[str], what: str) -> None:
    names = frame.collect_schema().names()
    missing = [c for c in columns if c not in names]
    if missing:
        raise BackendFabError(
            f"{what}: column {missing[0]!r} is missing from the die frame; pass the canonical die "
            f"table (schema.DIE){' and `runs=`' if missing[0] in RUN_COLUMNS else ''}"
        )


def with_run_context(die: pl.LazyFrame, runs: pl.LazyFrame | None) -> pl.LazyFrame:
    """Add the run's context columns (insertion, tester, program, start_time ...) to each die row."""
    if runs is None:
        return die
    have = set(die.collect_schema().names())
    cols = [c for c in RUN_COLUMNS if c in runs.collect_schema().names() and c not in have]
    if not cols:
        return die
    return die.join(runs.select("run_id", *cols), on="run_id", how="left", maintain_order="left")


def _unit_keys(frame: pl.LazyFrame) -> list[str]:
    keys = ["product", "lot_id", "wafer_id", "x", "y", "_part"]
    if "insertion" in frame.collect_schema().names():
        keys.insert(0, "insertion")
    return keys


def resolve_retests(
    die: pl.LazyFrame,
    *,
    runs: pl.LazyFrame | None = None,
    pass_bins: Sequence[int] | None = None,
) -> pl.LazyFrame:
    """Every die instance with its unit's retest history.

    Adds ``good`` (bool), ``instance`` (0 = first pass), ``n_instances``, ``is_first``,
    ``is_final`` and ``first_good`` (the first-pass verdict of the unit) to each row, plus the run
    context when ``runs`` is given. See the module docstring for the ordering rule.
    """
    _require(die, ("run_id", "part_seq", "product", "lot_id", "wafer_id", "x", "y"), "retests")
    frame = with_run_context(die, runs)
    names = frame.collect_schema().names()
    part = (
        pl.when(pl.col("x").is_not_null() & pl.col("y").is_not_null())
        .then(pl.lit(None, dtype=pl.String))
        .otherwise(
            pl.coalesce(
                pl.col("part_id") if "part_id" in names else pl.lit(None, dtype=pl.String),
                pl.concat_str(pl.col("run_id"), pl.col("part_seq").cast(pl.String), separator=":"),
            )
        )
    )
    retest = pl.col("retest_index").fill_null(0) if "retest_index" in names else pl.lit(0)
    final = pl.col("final").fill_null(True) if "final" in names else pl.lit(True)
    order = [retest]
    if "start_time" in names:
        order.append(pl.col("start_time"))
    order += [pl.col("run_id"), pl.col("part_seq")]
    frame = frame.with_columns(_part=part, good=good_expr(pass_bins), _final_flag=final)
    keys = _unit_keys(frame)
    inst = pl.int_range(pl.len(), dtype=pl.Int32).over(keys, order_by=order)
    frame = frame.with_columns(instance=inst, n_instances=pl.len().over(keys).cast(pl.Int32))
    last_final = pl.when(pl.col("_final_flag")).then(pl.col("instance")).max().over(keys)
    frame = frame.with_columns(
        is_first=pl.col("instance") == 0,
        is_final=pl.col("instance") == pl.coalesce(last_final, pl.col("n_instances") - 1),
        first_good=pl.col("good").filter(pl.col("instance") == 0).first().over(keys),
    )
    return frame.drop("_final_flag")


def select_instances(
    die: pl.LazyFrame,
    which: str = "final",
    *,
    runs: pl.LazyFrame | None = None,
    pass_bins: Sequence[int] | None = None,
) -> pl.LazyFrame:
    """The die instances to count: ``"final"`` (after retests), ``"first"`` (first pass) or
    ``"all"`` (every tested instance, e.g. for tester-level counts)."""
    frame = resolve_retests(die, runs=runs, pass_bins=pass_bins)
    if which == "final":
        return frame.filter(pl.col("is_final"))
    if which == "first":
        return frame.filter(pl.col("is_first"))
    if which == "all":
        return frame
    raise BackendFabError(f"which={which!r} is unknown; use 'final', 'first' or 'all'")


def _with_period(frame: pl.LazyFrame, every: str | None) -> tuple[pl.LazyFrame, list[str]]:
    """Add ``period``: the start of the time window holding the lot's first test."""
    if every is None:
        return frame, []
    _require(frame, ("start_time",), f"time window every={every!r} (needs runs)")
    lot_start = pl.col("start_time").min().over("product", "lot_id")
    return frame.with_columns(period=lot_start.dt.truncate(every)), ["period"]


# --- yield ------------------------------------------------------------------------------------


def yield_summary(
    die: pl.LazyFrame,
    *,
    level: str = "wafer",
    by: Sequence[str] = (),
    pass_bins: Sequence[int] | None = None,
    runs: pl.LazyFrame | None = None,
    layouts: pl.LazyFrame | None = None,
    every: str | None = None,
) -> pl.LazyFrame:
    """First-pass and final yield per wafer, lot, product (``level``) and optional extra keys.

    Parameters
    ----------
    die : the canonical die table (every instance, retests included).
    level : "wafer", "lot", "product" or "all".
    by : extra group columns (e.g. ``["site"]``; run columns such as ``"tester"`` or
        ``"insertion"`` need ``runs``). A unit counts in the group of its final instance for the
        final columns and in the group of its first instance for the first-pass columns.
    runs : the ``runs`` table; adds insertion and times (retest order, ``every``).
    layouts : the ``layouts`` table; adds ``n_gross`` and ``yield_gross`` (gross-die basis).
    every : a polars duration ("1d", "1w", "1mo", "1q"): group by the window holding each lot's
        first test start (``period`` column).

    Returns one row per group: ``n_tested`` (units, final), ``n_good``, ``yield_final``,
    ``n_first_pass``, ``n_good_first_pass``, ``yield_first_pass``, ``n_retested``,
    ``retest_rate``, ``n_recovered`` (failed first, passed finally), ``recovery_rate``,
    ``yield_lift`` (final minus first pass), ``n_wafers``, ``mean_wafer_yield`` (wafer-weighted,
    beside the die-weighted pooled ``yield_final``), ``n_gross``, ``yield_gross``. Yields are
    fractions in [0, 1]. Sorted by the group keys.
    """
    frame = resolve_retests(die, runs=runs, pass_bins=pass_bins)
    frame, period = _with_period(frame, every)
    keys = period + level_keys(level, by)
    _require(frame, keys, "yield_summary")
    wafer_keys = list(dict.fromkeys([*keys, "product", "lot_id", "wafer_id"]))
    final = pl.col("is_final")
    first = pl.col("is_first")
    good = pl.col("good")
    per_wafer = frame.group_by(wafer_keys).agg(
        n_tested=final.sum().cast(pl.Int64),
        n_good=(final & good).sum().cast(pl.Int64),
        n_first_pass=first.sum().cast(pl.Int64),
        n_good_first_pass=(first & good).sum().cast(pl.Int64),
        n_retested=(final & (pl.col("n_instances") > 1)).sum().cast(pl.Int64),
        n_recovered=(final & good & ~pl.col("first_good")).sum().cast(pl.Int64),
    )
    per_wafer = per_wafer.with_columns(_wafer_yield=_ratio("n_good", "n_tested"))
    counts = [
        "n_tested",
        "n_good",
        "n_first_pass",
        "n_good_first_pass",
        "n_retested",
        "n_recovered",
    ]
    out = per_wafer.group_by(keys).agg(
        *[pl.col(c).sum() for c in counts],
        n_wafers=(pl.col("n_tested") > 0).sum().cast(pl.Int64),
        mean_wafer_yield=pl.col("_wafer_yield").mean(),
    )
    out = out.with_columns(
        yield_final=_ratio("n_good", "n_tested"),
        yield_first_pass=_ratio("n_good_first_pass", "n_first_pass"),
        retest_rate=_ratio("n_retested", "n_tested"),
        recovery_rate=_ratio("n_recovered", "n_retested"),
    ).with_columns(yield_lift=pl.col("yield_final") - pl.col("yield_first_pass"))
    if layouts is not None:
        gross = layouts.select("product", pl.col("gross_die").cast(pl.Int64))
        gkeys = list(dict.fromkeys([*keys, "product"]))
        # wafers tested per product inside each group, times that product's gross die
        wafers = (
            per_wafer.filter(pl.col("n_tested") > 0)
            .group_by(gkeys)
            .agg(_w=pl.len())
            .join(gross, on="product", how="left", maintain_order="left")
            .with_columns(_g=pl.col("_w") * pl.col("gross_die"))
        )
        n_gross = pl.when(pl.col("_g").null_count() == 0).then(pl.col("_g").sum())
        if keys:
            gsum = wafers.group_by(keys).agg(n_gross=n_gross)
            out = out.join(gsum, on=keys, how="left", maintain_order="left", nulls_equal=True)
        else:
            out = out.join(wafers.select(n_gross=n_gross), how="cross")
        out = out.with_columns(yield_gross=_ratio("n_good", "n_gross"))
    else:
        out = out.with_columns(
            n_gross=pl.lit(None, dtype=pl.Int64), yield_gross=pl.lit(None, dtype=pl.Float64)
        )
    cols = [
        *keys,
        "n_tested",
        "n_good",
        "yield_final",
        "n_first_pass",
        "n_good_first_pass",
        "yield_first_pass",
        "yield_lift",
        "n_retested",
        "retest_rate",
        "n_recovered",
        "recovery_rate",
        "n_wafers",
        "mean_wafer_yield",
        "n_gross",
        "yield_gross",
    ]
    out = out.select(cols)
    return out.sort(keys, nulls_last=True) if keys else out


def _ratio(num: str, den: str) -> pl.Expr:
    return (
        pl.when(pl.col(den) > 0)
        .then(pl.col(num).cast(pl.Float64) / pl.col(den).cast(pl.Float64))
        .otherwise(None)
    )


# --- bins -------------------------------------------------------------------------------------


def bin_names(bins: pl.LazyFrame, kind: str = "hbin") -> pl.LazyFrame:
    """``(bin, name, pass_fail)`` per bin of ``kind`` from the ``bins`` table (HBR/SBR names).

    When runs disagree on a bin's name the most frequent one wins (ties: alphabetical first).
    """
    _check_kind(kind)
    rows = bins.filter((pl.col("kind") == BIN_KINDS[kind]) & pl.col("name").is_not_null())
    rows = rows.filter(pl.col("name") != "")
    named = (
        rows.group_by("bin", "name")
        .agg(_n=pl.len(), pass_fail=pl.col("pass_fail").drop_nulls().first())
        .sort(["bin", "_n", "name"], descending=[False, True, False])
        .group_by("bin", maintain_order=True)
        .first()
    )
    return named.select(pl.col("bin").cast(pl.Int32), "name", "pass_fail")


def bin_pareto(
    die: pl.LazyFrame,
    *,
    kind: str = "hbin",
    level: str = "lot",
    by: Sequence[str] = (),
    which: str = "final",
    pass_bins: Sequence[int] | None = None,
    bins: pl.LazyFrame | None = None,
    runs: pl.LazyFrame | None = None,
    include_pass: bool = False,
) -> pl.LazyFrame:
    """Hard- or soft-bin Pareto per group (DOMAIN.md §1.2).

    Returns per group and bin: ``count``, ``n_tested``, ``fraction`` (count / n_tested),
    ``n_fail``, ``share`` (count / n_fail), ``cum_share`` and ``rank`` (1 = largest fail bin),
    ``good`` (the bin holds good die) and ``name`` from the ``bins`` table when given. Failing
    bins only unless ``include_pass``; the fail counts sum to ``n_fail``. ``which`` selects first
    pass or final results (or every instance).
    """
    _check_kind(kind)
    frame = select_instances(die, which, runs=runs, pass_bins=pass_bins)
    keys = level_keys(level, by)
    _require(frame, [*keys, kind], "bin_pareto")
    frame = frame.with_columns(pl.col(kind).alias("bin"))
    counts = frame.group_by(*keys, "bin").agg(
        count=pl.len().cast(pl.Int64), good=pl.col("good").any()
    )
    window = keys if keys else None

    def over(expr: pl.Expr) -> pl.Expr:
        return expr.over(window) if window else expr

    counts = counts.with_columns(
        n_tested=over(pl.col("count").sum()),
        n_fail=over(pl.col("count").filter(~pl.col("good")).sum()),
    )
    if not include_pass:
        counts = counts.filter(~pl.col("good"))
    order = [*keys, "good", "count", "bin"]
    desc = [False] * len(keys) + [False, True, False]
    counts = counts.sort(order, descending=desc, nulls_last=True)
    fail_count = pl.when(~pl.col("good")).then(pl.col("count")).otherwise(0)
    counts = counts.with_columns(
        fraction=pl.col("count") / pl.col("n_tested"),
        share=pl.when(~pl.col("good")).then(_ratio("count", "n_fail")),
        cum_share=over(fail_count.cum_sum()) / pl.col("n_fail").cast(pl.Float64),
        rank=over(pl.int_range(1, pl.len() + 1, dtype=pl.Int32)),
    )
    counts = counts.with_columns(
        cum_share=pl.when(~pl.col("good")).then(pl.col("cum_share")),
        kind=pl.lit(kind),
    )
    if bins is not None:
        counts = counts.join(
            bin_names(bins, kind).select("bin", "name"), on="bin", how="left", maintain_order="left"
        )
    else:
        counts = counts.with_columns(name=pl.lit(None, dtype=pl.String))
    return counts.select(
        *keys,
        "kind",
        "bin",
        "name",
        "good",
        "count",
        "n_tested",
        "fraction",
        "n_fail",
        "share",
        "cum_share",
        "rank",
    )


def retest_recovery(
    die: pl.LazyFrame,
    *,
    kind: str = "hbin",
    level: str = "lot",
    by: Sequence[str] = (),
    pass_bins: Sequence[int] | None = None,
    runs: pl.LazyFrame | None = None,
) -> pl.LazyFrame:
    """Retest and recovery per first-pass failing bin (DOMAIN.md §1.1).

    Per group and first-pass bin ``b``: ``n_failed`` (units whose first result is bin ``b``),
    ``n_retested`` (of those, retested), ``n_recovered`` (of those, good finally),
    ``retest_rate``, ``recovery_rate`` = recovered / retested (null when none was retested) and
    ``final_bins`` (the final bins those units ended in, most frequent first). High recovery
    points to contact or marginal tests; zero recovery to a real defect.
    """
    _check_kind(kind)
    frame = resolve_retests(die, runs=runs, pass_bins=pass_bins)
    keys = level_keys(level, by)
    ukeys = _unit_keys(frame)
    first = frame.filter(pl.col("is_first") & ~pl.col("good")).select(
        *ukeys, *[k for k in keys if k not in ukeys], pl.col(kind).alias("bin"), "n_instances"
    )
    final = frame.filter(pl.col("is_final")).select(
        *ukeys, pl.col("good").alias("final_good"), pl.col(kind).alias("final_bin")
    )
    units = first.join(final, on=ukeys, how="left", maintain_order="left", nulls_equal=True)
    retested = pl.col("n_instances") > 1
    out = units.group_by(*keys, "bin").agg(
        n_failed=pl.len().cast(pl.Int64),
        n_retested=retested.sum().cast(pl.Int64),
        n_recovered=(retested & pl.col("final_good")).sum().cast(pl.Int64),
    )
    where = (
        units.filter(retested)
        .group_by(*keys, "bin", "final_bin")
        .agg(_n=pl.len())
        .sort(
            [*keys, "bin", "_n", "final_bin"], descending=[False] * (len(keys) + 1) + [True, False]
        )
        .group_by(*keys, "bin", maintain_order=True)
        .agg(
            final_bins=(
                pl.col("final_bin").cast(pl.String) + ":" + pl.col("_n").cast(pl.String)
            ).str.join(", ")
        )
    )
    out = out.join(
        where, on=[*keys, "bin"], how="left", maintain_order="left", nulls_equal=True
    ).with_columns(
        retest_rate=_ratio("n_retested", "n_failed"),
        recovery_rate=_ratio("n_recovered", "n_retested"),
        final_bins=pl.col("final_bins").fill_null(""),
        kind=pl.lit(kind),
    )
    return out.select(
        *keys,
        "kind",
        "bin",
        "n_failed",
        "n_retested",
        "retest_rate",
        "n_recovered",
        "recovery_rate",
        "final_bins",
    ).sort([*keys, "n_failed", "bin"], descending=[False] * len(keys) + [True, False])


# --- statistics helpers (collected data) -----------------------------------------------------


def bh_adjust(p) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) of a 1-d array; NaN stays NaN.

    q_(i) = min_{j >= i} p_(j) m / j over the m non-NaN p-values (Benjamini & Hochberg 1995);
    rejecting q <= alpha controls the false discovery rate at alpha.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return q
    pv = p[ok]
    order = np.argsort(pv, kind="stable")
    ranked = pv[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(ranked, 1.0)
    q[ok] = out
    return q


def poisson_binomial_sf(k, probs_list, *, exact_max: int = 200) -> np.ndarray:
    """P(X >= k) for X a sum of independent Bernoulli(p_i), one probability list per case.

    Exact (dynamic programming over the trials) when a case has at most ``exact_max`` trials;
    otherwise the refined normal approximation with a skewness term (Hong, "On computing the
    distribution function for the Poisson binomial distribution", CSDA 59:41-51, 2013).
    """
    from scipy import stats

    k = np.asarray(k, dtype=np.int64)
    out = np.empty(k.shape, dtype=np.float64)
    for i, (ki, probs) in enumerate(zip(k, probs_list, strict=True)):
        p = np.asarray(probs, dtype=np.float64)
        n = p.size
        if ki <= 0:
            out[i] = 1.0
            continue
        if ki > n:
            out[i] = 0.0
            continue
        if n <= exact_max:
            dist = np.zeros(n + 1)
            dist[0] = 1.0
            for j, pj in enumerate(p):
                dist[1 : j + 2] = dist[1 : j + 2] * (1.0 - pj) + dist[0 : j + 1] * pj
                dist[0] *= 1.0 - pj
            out[i] = min(1.0, max(0.0, float(dist[ki:].sum())))
        else:
            mu = p.sum()
            var = (p * (1 - p)).sum()
            if var <= 0:
                out[i] = 1.0 if ki <= mu else 0.0
                continue
            sd = math.sqrt(var)
            gamma = (p * (1 - p) * (1 - 2 * p)).sum() / sd**3
            x = (ki - 0.5 - mu) / sd
            cdf = stats.norm.cdf(x) + gamma * (1 - x * x) * stats.norm.pdf(x) / 6.0
            out[i] = min(1.0, max(0.0, 1.0 - cdf))
    return out


@dataclass(frozen=True)
class CMHResult:
    """Generalised Cochran-Mantel-Haenszel test of conditional independence."""

    statistic: float
    dof: int
    p_value: float
    n_strata: int


def cmh_test(tables) -> CMHResult:
    """Generalised CMH "general association" test for K strata of R x C tables.

    ``tables`` has shape (K, R, C) of counts. Strata with fewer than 2 observations carry no
    information and are skipped. Q = G' V^-1 G with G = sum_k (n_k - m_k) over the first R-1 x C-1
    cells and V = sum_k Var_k under the product-hypergeometric null (Landis, Heyman & Koch,
    Int. Stat. Rev. 46:237-254, 1978); Q ~ chi2 with (R-1)(C-1) degrees of freedom (the rank of
    V when some rows or columns are empty). For 2 x 2 x K it equals the Mantel-Haenszel statistic
    without continuity correction; for K = 1 it equals (N - 1)/N times Pearson's chi-square.
    """
    from scipy import stats

    t = np.asarray(tables, dtype=np.float64)
    if t.ndim != 3 or t.shape[1] < 2 or t.shape[2] < 2:
        raise BackendFabError(f"cmh_test needs a (K, R, C) array with R, C >= 2; got {t.shape}")
    r, c = t.shape[1], t.shape[2]
    g = np.zeros((r - 1) * (c - 1))
    v = np.zeros((g.size, g.size))
    used = 0
    for tab in t:
        n = tab.sum()
        if n < 2:
            continue
        rows = tab.sum(axis=1)
        cols = tab.sum(axis=0)
        expected = np.outer(rows, cols) / n
        g += (tab - expected)[: r - 1, : c - 1].ravel()
        vr = n * np.diag(rows[: r - 1]) - np.outer(rows[: r - 1], rows[: r - 1])
        vc = n * np.diag(cols[: c - 1]) - np.outer(cols[: c - 1], cols[: c - 1])
        v += np.kron(vr, vc) / (n * n * (n - 1))
        used += 1
    if used == 0:
        return CMHResult(float("nan"), 0, float("nan"), 0)
    dof = int(np.linalg.matrix_rank(v))
    if dof == 0:
        return CMHResult(0.0, 0, 1.0, used)
    stat = float(g @ np.linalg.pinv(v) @ g)
    return CMHResult(stat, dof, float(stats.chi2.sf(stat, dof)), used)


@dataclass(frozen=True)
class MHResult:
    """Mantel-Haenszel test for K strata of 2 x 2 tables, with the common odds ratio and the
    stratum-adjusted risk difference of row 0 minus row 1 (column 0 = the event)."""

    statistic: float
    p_value: float
    odds_ratio: float
    risk_difference: float
    n_strata: int


def mantel_haenszel(tables, *, correct: bool = True) -> MHResult:
    """Mantel-Haenszel chi-square (1 dof) for (K, 2, 2) tables, as R's ``mantelhaen.test``.

    X = (|sum a_k - sum E a_k| - c)^2 / sum Var a_k with c = 0.5 under ``correct``,
    E a_k = n1_k m1_k / N_k, Var a_k = n1_k n2_k m1_k m2_k / (N_k^2 (N_k - 1)).
    Odds ratio: sum(a d / N) / sum(b c / N). Risk difference: sum w_k (a/n1 - c/n2) / sum w_k with
    w_k = n1_k n2_k / N_k (the Mantel-Haenszel weights; Greenland & Robins 1985).
    """
    from scipy import stats

    t = np.asarray(tables, dtype=np.float64)
    if t.ndim != 3 or t.shape[1:] != (2, 2):
        raise BackendFabError(f"mantel_haenszel needs a (K, 2, 2) array; got {t.shape}")
    a, b, c, d = t[:, 0, 0], t[:, 0, 1], t[:, 1, 0], t[:, 1, 1]
    n = a + b + c + d
    ok = n >= 2
    a, b, c, d, n = a[ok], b[ok], c[ok], d[ok], n[ok]
    n1, n2, m1, m2 = a + b, c + d, a + c, b + d
    expected = n1 * m1 / n
    var = n1 * n2 * m1 * m2 / (n * n * (n - 1))
    vsum = var.sum()
    if vsum <= 0:
        stat, p = 0.0, 1.0
    else:
        dev = abs(a.sum() - expected.sum())
        if correct:
            dev = max(0.0, dev - 0.5)
        stat = float(dev * dev / vsum)
        p = float(stats.chi2.sf(stat, 1))
    num, den = (a * d / n).sum(), (b * c / n).sum()
    odds = float(num / den) if den > 0 else float("inf") if num > 0 else float("nan")
    w = np.where((n1 > 0) & (n2 > 0), n1 * n2 / n, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rd_k = np.where(w > 0, a / np.maximum(n1, 1) - c / np.maximum(n2, 1), 0.0)
    rd = float((w * rd_k).sum() / w.sum()) if w.sum() > 0 else float("nan")
    return MHResult(stat, p, odds, rd, int(ok.sum()))


# --- stacked maps -----------------------------------------------------------------------------


def stacked_map(
    die: pl.LazyFrame,
    *,
    fail_bins: Sequence[int] | None = None,
    kind: str = "hbin",
    level: str = "lot",
    by: Sequence[str] = (),
    pass_bins: Sequence[int] | None = None,
    null: str = "wafer",
    fdr: float = 0.05,
    which: str = "final",
    runs: pl.LazyFrame | None = None,
) -> pl.LazyFrame:
    """Stacked (composite) fail map per location with a significance layer (DOMAIN.md §1.3).

    Per group and ``(x, y)``: ``n_tested``, ``n_fail`` (die in ``fail_bins`` of ``kind``, or every
    die that is not good when ``fail_bins`` is None), ``fail_rate`` and ``expected`` (the mean
    fail probability under the null). ``p_value`` = P(X >= n_fail) under the null: ``"lot"``
    pools the group's fail rate (binomial); ``"wafer"`` uses each wafer's own fail rate
    (Poisson-binomial), so a bad wafer does not make every location look hot. ``q_value`` is the
    Benjamini-Hochberg adjustment over the group's locations; ``significant`` = q <= ``fdr``.
    """
    if null not in ("lot", "wafer"):
        raise BackendFabError(f"null={null!r} is unknown; use 'lot' (pooled) or 'wafer'")
    if not 0 < fdr < 1:
        raise BackendFabError(f"fdr must lie in (0, 1), got {fdr!r}")
    _check_kind(kind)
    frame = select_instances(die, which, runs=runs, pass_bins=pass_bins)
    keys = level_keys(level, by)
    _require(frame, [*keys, kind], "stacked_map")
    if fail_bins is None:
        fail = ~pl.col("good")
    else:
        fail = pl.col(kind).is_in([int(b) for b in fail_bins]).fill_null(False)
    frame = frame.filter(pl.col("x").is_not_null() & pl.col("y").is_not_null())
    wafer = [*keys, *[k for k in ("product", "lot_id", "wafer_id") if k not in keys]]
    frame = frame.with_columns(_fail=fail).with_columns(
        _pw=pl.col("_fail").cast(pl.Float64).mean().over(wafer)
    )
    group = keys if keys else None

    def over(expr: pl.Expr) -> pl.Expr:
        return expr.over(group) if group else expr

    frame = frame.with_columns(_pbar=over(pl.col("_fail").cast(pl.Float64).mean()))
    loc = frame.group_by(*keys, "x", "y").agg(
        n_tested=pl.len().cast(pl.Int64),
        n_fail=pl.col("_fail").sum().cast(pl.Int64),
        _pbar=pl.col("_pbar").first(),
        _probs=pl.col("_pw"),
    )
    loc = loc.with_columns(
        fail_rate=pl.col("n_fail") / pl.col("n_tested"),
        expected=pl.col("_probs").list.mean() if null == "wafer" else pl.col("_pbar"),
    ).sort([*keys, "y", "x"])
    schema = {
        **dict(loc.collect_schema()),
        "p_value": pl.Float64,
        "q_value": pl.Float64,
        "significant": pl.Boolean,
    }

    def test(df: pl.DataFrame) -> pl.DataFrame:
        from scipy import stats

        if df.height == 0:
            return df.with_columns(
                p_value=pl.lit(None, dtype=pl.Float64),
                q_value=pl.lit(None, dtype=pl.Float64),
                significant=pl.lit(None, dtype=pl.Boolean),
            )
        k = df["n_fail"].to_numpy()
        n = df["n_tested"].to_numpy()
        if null == "lot":
            p = stats.binom.sf(k - 1, n, df["_pbar"].to_numpy())
        else:
            p = poisson_binomial_sf(k, df["_probs"].to_list())
        p = np.clip(p, 0.0, 1.0)
        if keys:
            gid = df.select(pl.struct(keys).rank("dense")).to_series().to_numpy()
        else:
            gid = np.zeros(df.height, dtype=np.int64)
        q = np.empty_like(p)
        for g in np.unique(gid):
            sel = gid == g
            q[sel] = bh_adjust(p[sel])
        return df.with_columns(
            p_value=pl.Series(p), q_value=pl.Series(q), significant=pl.Series(q <= fdr)
        )

    out = loc.map_batches(test, schema=schema)
    return out.select(
        *keys,
        "x",
        "y",
        "n_tested",
        "n_fail",
        "fail_rate",
        "expected",
        "p_value",
        "q_value",
        "significant",
    )


def stacked_hot_spots(die: pl.LazyFrame | pl.DataFrame, **kwargs) -> pl.DataFrame:
    """The significant locations of :func:`stacked_map` (same arguments), collected, most
    significant first: what the nightly batch reports as hot spots."""
    lf = die.lazy() if isinstance(die, pl.DataFrame) else die
    out = stacked_map(lf, **kwargs).filter(pl.col("significant")).collect()
    keys = [c for c in out.columns if c in ("product", "lot_id", "wafer_id")]
    return out.sort([*keys, "q_value", "p_value", "y", "x"])


# --- zones and site-to-site -------------------------------------------------------------------


def wafer_zones(
    die: pl.DataFrame,
    *,
    n_rings: int = 3,
    layouts: pl.DataFrame | pl.LazyFrame | None = None,
) -> pl.Series:
    """Ring zone of each die (0 = outermost), for stratifying by wafer region.

    With the product's layout, zone = min(ring, n_rings - 1) where ring is
    :meth:`backend_fab.layout.Layout.ring_index` (0 = the outermost ring of gross die, the ring
    that partial touchdowns probe); die off the gross set count as zone 0. Without a layout the
    wafer's tested die give the centre (midpoint of the x and y ranges) and zones are equal-area
    annuli of the normalised radius, outermost first.
    """
    if n_rings < 1:
        raise BackendFabError(f"n_rings must be >= 1, got {n_rings}")
    zone = np.zeros(die.height, dtype=np.int32)
    layout_rows = {}
    if layouts is not None:
        lay = layouts.collect() if isinstance(layouts, pl.LazyFrame) else layouts
        layout_rows = {r["product"]: r for r in lay.iter_rows(named=True)}
    idx = die.with_row_index("_i").select("_i", "product", "lot_id", "wafer_id", "x", "y")
    for (product,), part in idx.group_by("product", maintain_order=True):
        if product in layout_rows:
            from backend_fab.layout import Layout

            layout = Layout.from_row(layout_rows[product])
            x, y = layout.to_canonical(part["x"].to_numpy(), part["y"].to_numpy())
            ring = layout.ring_index(x, y)
            zone[part["_i"].to_numpy()] = np.clip(ring, 0, n_rings - 1)
            continue
        for _, w in part.group_by("lot_id", "wafer_id", maintain_order=True):
            x = w["x"].to_numpy().astype(np.float64)
            y = w["y"].to_numpy().astype(np.float64)
            cx, cy = (x.min() + x.max()) / 2, (y.min() + y.max()) / 2
            rx = max((x.max() - x.min()) / 2 + 0.5, 0.5)
            ry = max((y.max() - y.min()) / 2 + 0.5, 0.5)
            r2 = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
            band = np.floor(np.clip(r2, 0, 0.999999) * n_rings).astype(np.int32)
            zone[w["_i"].to_numpy()] = n_rings - 1 - band
    return pl.Series("zone", zone)


_STRATA = ("wafer", "ring", "reticle")


def _strata_parts(strata) -> list[str]:
    if strata is None:
        return []
    parts = strata.split("_") if isinstance(strata, str) else list(strata)
    bad = [p for p in parts if p not in _STRATA]
    if bad or not parts:
        raise BackendFabError(
            f"strata={strata!r} is unknown; combine {', '.join(_STRATA)} (e.g. 'wafer_ring') or "
            "give None"
        )
    return [p for p in _STRATA if p in parts]


def _site_gate(p: float, delta: float, alpha: float, min_delta: float, direction: str) -> bool:
    if math.isnan(p) or math.isnan(delta) or p >= alpha:
        return False
    return delta <= -min_delta if direction == "lower" else abs(delta) >= min_delta


def reticle_positions(die: pl.DataFrame, layouts: pl.DataFrame | None) -> pl.Series:
    """Index ``ry * reticle_cols + rx`` of each die's position inside its reticle field
    (:meth:`backend_fab.layout.Layout.reticle_xy` in the canonical frame); needs the product's
    layout."""
    from backend_fab.layout import Layout

    rows = {} if layouts is None else {r["product"]: r for r in layouts.iter_rows(named=True)}
    out = np.zeros(die.height, dtype=np.int32)
    idx = die.with_row_index("_i").select("_i", "product", "x", "y")
    for (product,), part in idx.group_by("product", maintain_order=True):
        if product not in rows:
            raise BackendFabError(
                f"strata 'reticle' needs the layout of product {product!r} (layouts=)"
            )
        lay = Layout.from_row(rows[product])
        x, y = lay.to_canonical(part["x"].to_numpy(), part["y"].to_numpy())
        rx, ry = lay.reticle_xy(x, y)
        out[part["_i"].to_numpy()] = ry.astype(np.int32) * lay.reticle_cols + rx
    return pl.Series("reticle_position", out)


@dataclass(frozen=True)
class SiteComparison:
    """Result of :func:`site_comparison`.

    ``overall``: one row per group: ``n_sites``, ``n_tested``, ``chi2``, ``dof``, ``p_value``
    and ``method`` ("chi2", "fisher" or "monte-carlo" when an expected count is below 5),
    ``cramers_v``, ``strata``, ``n_strata``, ``cmh_stat``, ``cmh_dof``, ``cmh_p``.

    ``sites``: one row per group and site: ``n_tested``, ``n_good``, ``yield``, ``delta`` (site
    yield minus the other sites' pooled yield), ``p_value`` (Fisher exact, site vs the rest) and
    ``p_adj`` (BH over the group's sites), ``delta_adjusted`` and ``odds_ratio_mh`` (stratified,
    Mantel-Haenszel), ``p_cmh`` and ``p_cmh_adj`` (MH test site vs the rest within strata, BH),
    ``flagged`` (significant at ``alpha`` and past the ``min_delta`` gate, using the stratified
    columns when strata are given) and ``confounded`` (the raw comparison flags the site but the
    stratified one does not: the difference is explained by where the site probes).
    """

    overall: pl.DataFrame
    sites: pl.DataFrame
    alpha: float
    min_delta: float

    def flagged(self) -> pl.DataFrame:
        """Sites that fail the comparison."""
        return self.sites.filter(pl.col("flagged"))


def site_comparison(
    die: pl.LazyFrame | pl.DataFrame,
    *,
    level: str = "lot",
    by: Sequence[str] = (),
    strata: str | None = "wafer_ring",
    pass_bins: Sequence[int] | None = None,
    which: str = "final",
    layouts: pl.DataFrame | pl.LazyFrame | None = None,
    n_rings: int = 3,
    alpha: float = 0.01,
    min_delta: float = 0.01,
    direction: str = "lower",
    runs: pl.LazyFrame | None = None,
    mc_samples: int = 9999,
    seed: int = 0,
) -> SiteComparison:
    """Site-to-site yield comparison of a multi-site probe card (DOMAIN.md §1.4). Collects.

    Per group (``level`` + ``by``): the S x 2 (site x pass/fail) table with Pearson chi-square
    (Fisher exact for 2 sites, or a Monte-Carlo p-value, when an expected count is below 5) and
    Cramér's V; each site against the others (Fisher exact, BH-adjusted). Because site s always
    sits at the same offset in a touchdown, sites probe different wafer regions: ``strata``
    removes that with a generalised CMH test over sites and a Mantel-Haenszel test per site,
    stratified by any of "wafer", "ring" (zone of :func:`wafer_zones`) and "reticle" (position
    inside the reticle field, :func:`reticle_positions`; needs ``layouts``), given as a list or
    joined with "_" ("wafer_ring", "wafer_ring_reticle"), or None. A site is ``flagged`` when its
    (stratified) BH-adjusted p-value is below ``alpha`` and its yield difference passes the
    effect-size gate ``min_delta``: below the others by at least ``min_delta`` with
    ``direction="lower"`` (a bad site; the default), or either way with "both". Use
    ``which="first"`` for contact problems, which retests hide in final results.
    """
    from scipy import stats

    parts = _strata_parts(strata)
    if direction not in ("lower", "both"):
        raise BackendFabError(f"direction={direction!r} is unknown; use 'lower' or 'both'")
    lf = die.lazy() if isinstance(die, pl.DataFrame) else die
    frame = select_instances(lf, which, runs=runs, pass_bins=pass_bins)
    keys = level_keys(level, by)
    _require(frame, [*keys, "site"], "site_comparison")
    df = frame.filter(pl.col("site").is_not_null()).collect()
    if df.height == 0:
        raise BackendFabError("site_comparison: no die with a site number in the die frame")
    stratum_cols: list[str] = []
    lay = layouts.collect() if isinstance(layouts, pl.LazyFrame) else layouts
    if "wafer" in parts:
        stratum_cols += ["lot_id", "wafer_id"]
    if "ring" in parts:
        df = df.with_columns(wafer_zones(df, n_rings=n_rings, layouts=lay))
        stratum_cols.append("zone")
    if "reticle" in parts:
        df = df.with_columns(reticle_positions(df, lay))
        stratum_cols.append("reticle_position")
    strata = "_".join(parts) if parts else None
    groups = df.group_by(keys, maintain_order=True) if keys else [((), df)]
    overall_rows, site_rows = [], []
    rng = np.random.default_rng(seed)
    for key_vals, part in groups:
        gkey = dict(
            zip(keys, key_vals if isinstance(key_vals, tuple) else (key_vals,), strict=True)
        )
        counts = part.group_by("site").agg(n=pl.len(), good=pl.col("good").sum()).sort("site")
        sites = counts["site"].to_list()
        n = counts["n"].to_numpy().astype(np.float64)
        good = counts["good"].to_numpy().astype(np.float64)
        table2 = np.column_stack([good, n - good])
        row = {**gkey, "n_sites": len(sites), "n_tested": int(n.sum())}
        row.update(_site_overall(table2, rng, mc_samples))
        # stratified tables (K, S, 2)
        if stratum_cols:
            st_counts = (
                part.group_by(*stratum_cols, "site")
                .agg(n=pl.len(), good=pl.col("good").sum())
                .with_columns(
                    _k=pl.struct(stratum_cols).rank("dense").cast(pl.Int64) - 1,
                    _s=pl.col("site").replace_strict(
                        sites, list(range(len(sites))), return_dtype=pl.Int64
                    ),
                )
            )
            k_n = int(st_counts["_k"].max()) + 1
            cube = np.zeros((k_n, len(sites), 2))
            kk = st_counts["_k"].to_numpy()
            ss = st_counts["_s"].to_numpy()
            g = st_counts["good"].to_numpy().astype(np.float64)
            nn = st_counts["n"].to_numpy().astype(np.float64)
            cube[kk, ss, 0] = g
            cube[kk, ss, 1] = nn - g
            if len(sites) >= 2:
                cmh = cmh_test(cube)
                row.update(cmh_stat=cmh.statistic, cmh_dof=cmh.dof, cmh_p=cmh.p_value)
            else:
                row.update(cmh_stat=float("nan"), cmh_dof=0, cmh_p=float("nan"))
            row.update(strata=strata, n_strata=k_n)
        else:
            cube = None
            row.update(strata=None, n_strata=0, cmh_stat=None, cmh_dof=None, cmh_p=None)
        overall_rows.append(row)
        p_raw, p_mh, odds, rd = [], [], [], []
        for i in range(len(sites)):
            rest_good = good.sum() - good[i]
            rest_n = n.sum() - n[i]
            tab = np.array([[good[i], n[i] - good[i]], [rest_good, rest_n - rest_good]])
            if rest_n > 0:
                p_raw.append(float(stats.fisher_exact(tab)[1]))
            else:
                p_raw.append(float("nan"))
            if cube is not None and len(sites) >= 2:
                two = np.zeros((cube.shape[0], 2, 2))
                two[:, 0, :] = cube[:, i, :]
                two[:, 1, :] = cube.sum(axis=1) - cube[:, i, :]
                mh = mantel_haenszel(two)
                p_mh.append(mh.p_value)
                odds.append(mh.odds_ratio)
                rd.append(mh.risk_difference)
            else:
                p_mh.append(float("nan"))
                odds.append(float("nan"))
                rd.append(float("nan"))
        p_adj = bh_adjust(p_raw)
        p_mh_adj = bh_adjust(p_mh)
        for i, site in enumerate(sites):
            rest_n = n.sum() - n[i]
            y_site = good[i] / n[i]
            y_rest = (good.sum() - good[i]) / rest_n if rest_n > 0 else float("nan")
            delta = y_site - y_rest
            raw_flag = _site_gate(float(p_adj[i]), float(delta), alpha, min_delta, direction)
            flag = (
                _site_gate(float(p_mh_adj[i]), float(rd[i]), alpha, min_delta, direction)
                if cube is not None
                else raw_flag
            )
            site_rows.append(
                {
                    **gkey,
                    "site": int(site),
                    "n_tested": int(n[i]),
                    "n_good": int(good[i]),
                    "yield": float(y_site),
                    "delta": float(delta),
                    "p_value": p_raw[i],
                    "p_adj": float(p_adj[i]),
                    "delta_adjusted": rd[i],
                    "odds_ratio_mh": odds[i],
                    "p_cmh": p_mh[i],
                    "p_cmh_adj": float(p_mh_adj[i]),
                    "flagged": flag,
                    "confounded": bool(raw_flag and not flag),
                }
            )
    overall_schema = {
        **{k: df.schema[k] for k in keys},
        "n_sites": pl.Int64,
        "n_tested": pl.Int64,
        "chi2": pl.Float64,
        "dof": pl.Int64,
        "p_value": pl.Float64,
        "method": pl.String,
        "cramers_v": pl.Float64,
        "strata": pl.String,
        "n_strata": pl.Int64,
        "cmh_stat": pl.Float64,
        "cmh_dof": pl.Int64,
        "cmh_p": pl.Float64,
    }
    sites_schema = {
        **{k: df.schema[k] for k in keys},
        "site": pl.Int16,
        "n_tested": pl.Int64,
        "n_good": pl.Int64,
        "yield": pl.Float64,
        "delta": pl.Float64,
        "p_value": pl.Float64,
        "p_adj": pl.Float64,
        "delta_adjusted": pl.Float64,
        "odds_ratio_mh": pl.Float64,
        "p_cmh": pl.Float64,
        "p_cmh_adj": pl.Float64,
        "flagged": pl.Boolean,
        "confounded": pl.Boolean,
    }
    overall = pl.DataFrame(overall_rows, schema=overall_schema, orient="row")
    sites_df = pl.DataFrame(site_rows, schema=sites_schema, orient="row")
    # NaN (not computable) is reported as null
    overall = overall.with_columns(pl.col(pl.Float64).fill_nan(None))
    sites_df = sites_df.with_columns(pl.col(pl.Float64).fill_nan(None))
    return SiteComparison(overall=overall, sites=sites_df, alpha=alpha, min_delta=min_delta)


def _site_overall(table2: np.ndarray, rng: np.random.Generator, mc_samples: int) -> dict:
    """Chi-square (or exact / Monte-Carlo) test and Cramér's V of an S x 2 table."""
    from scipy import stats

    out = {"chi2": None, "dof": None, "p_value": None, "method": None, "cramers_v": None}
    keep = table2.sum(axis=1) > 0
    t = table2[keep]
    if t.shape[0] < 2 or (t.sum(axis=0) == 0).any():
        out.update(chi2=0.0, dof=max(t.shape[0] - 1, 0), p_value=1.0, method="chi2", cramers_v=0.0)
        return out
    res = stats.chi2_contingency(t, correction=False)
    chi2, dof, expected = float(res.statistic), int(res.dof), res.expected_freq
    total = t.sum()
    out.update(chi2=chi2, dof=dof, cramers_v=math.sqrt(chi2 / total))
    if expected.min() >= 5:
        out.update(p_value=float(res.pvalue), method="chi2")
    elif t.shape[0] == 2:
        out.update(p_value=float(stats.fisher_exact(t)[1]), method="fisher")
    else:
        mc = stats.chi2_contingency(
            t,
            correction=False,
            method=stats.MonteCarloMethod(n_resamples=mc_samples, rng=rng),
        )
        out.update(p_value=float(mc.pvalue), method="monte-carlo")
    return out


# --- trend charts -----------------------------------------------------------------------------


def control_chart(
    frame: pl.LazyFrame,
    *,
    value: str,
    order_by: str | Sequence[str],
    n: str | None = None,
    by: Sequence[str] = (),
    k: float = 3.0,
    lam: float = 0.2,
    L: float = 3.0,
) -> pl.LazyFrame:
    """Control limits for a run chart of ``value`` ordered by ``order_by`` (DOMAIN.md §1.5).

    With ``n`` (a proportion chart, e.g. yield with n = die tested): centre p̄ = sum(p n)/sum(n),
    binomial σ_i = sqrt(p̄(1-p̄)/n_i), p-chart limits p̄ ± k σ_i; **Laney p'** limits
    p̄ ± k σ_i σ_z with σ_z = mean|z_i - z_(i-1)|/1.128 of z_i = (p_i - p̄)/σ_i (Laney, "Improved
    control charts for attributes", Quality Engineering 14(4), 2002). Without ``n`` the same
    formulas with σ_i = 1 give an individuals chart (x̄ ± k MR̄/1.128).
    **EWMA** (λ = ``lam``, width ``L``): e_0 = p̄, e_i = λ p_i + (1-λ) e_(i-1), with the exact
    variance V_i = (1-λ)^2 V_(i-1) + λ^2 (σ_i σ_z)^2 for unequal n (Montgomery, Introduction to
    Statistical Quality Control, §9.2). Limits of proportions are clipped to [0, 1].

    Adds ``center``, ``sigma``, ``p_lcl``/``p_ucl`` (null without ``n``), ``sigma_z``,
    ``laney_lcl``/``laney_ucl``, ``ewma``, ``ewma_lcl``/``ewma_ucl`` and the flags ``out_laney``
    and ``out_ewma``. Rows with a null value are dropped. Sorted by ``by`` then ``order_by`` (a
    column or a list of columns).
    """
    if not 0 < lam <= 1:
        raise BackendFabError(f"EWMA lambda must lie in (0, 1], got {lam!r}")
    if k <= 0 or L <= 0:
        raise BackendFabError(f"control limit widths must be positive, got k={k!r}, L={L!r}")
    keys = list(by)
    order = [order_by] if isinstance(order_by, str) else list(order_by)
    frame = frame.filter(pl.col(value).is_not_null() & pl.col(value).is_not_nan())
    frame = frame.sort([*keys, *order], nulls_last=True)
    schema = dict(frame.collect_schema())
    extra = [
        "center",
        "sigma",
        "p_lcl",
        "p_ucl",
        "sigma_z",
        "laney_lcl",
        "laney_ucl",
        "ewma",
        "ewma_lcl",
        "ewma_ucl",
    ]
    out_schema = {**schema, **dict.fromkeys(extra, pl.Float64)}
    out_schema.update(out_laney=pl.Boolean, out_ewma=pl.Boolean)

    def compute(df: pl.DataFrame) -> pl.DataFrame:
        cols = {c: np.full(df.height, np.nan) for c in extra}
        parts = (
            df.with_row_index("_i").partition_by(keys, maintain_order=True)
            if keys
            else [df.with_row_index("_i")]
        )
        for part in parts:
            idx = part["_i"].to_numpy()
            x = part[value].cast(pl.Float64).to_numpy()
            m = x.size
            if n is not None:
                w = part[n].cast(pl.Float64).to_numpy()
                center = float((x * w).sum() / w.sum()) if w.sum() > 0 else float("nan")
                sig = np.sqrt(np.maximum(center * (1 - center), 0.0) / np.maximum(w, 1.0))
            else:
                center = float(x.mean())
                sig = np.ones(m)
            with np.errstate(invalid="ignore", divide="ignore"):
                z = np.where(sig > 0, (x - center) / sig, 0.0)
            sigma_z = float(np.abs(np.diff(z)).mean() / 1.128) if m >= 2 else float("nan")
            s = sig * sigma_z
            e = np.empty(m)
            v = np.empty(m)
            prev_e, prev_v = center, 0.0
            for i in range(m):
                prev_e = lam * x[i] + (1 - lam) * prev_e
                prev_v = (1 - lam) ** 2 * prev_v + lam**2 * s[i] ** 2
                e[i], v[i] = prev_e, prev_v
            cols["center"][idx] = center
            cols["sigma"][idx] = sig if n is not None else np.nan
            if n is not None:
                cols["p_lcl"][idx] = center - k * sig
                cols["p_ucl"][idx] = center + k * sig
            cols["sigma_z"][idx] = sigma_z
            cols["laney_lcl"][idx] = center - k * s
            cols["laney_ucl"][idx] = center + k * s
            cols["ewma"][idx] = e
            cols["ewma_lcl"][idx] = center - L * np.sqrt(v)
            cols["ewma_ucl"][idx] = center + L * np.sqrt(v)
        if n is not None:
            for c in ("p_lcl", "laney_lcl", "ewma_lcl", "p_ucl", "laney_ucl", "ewma_ucl"):
                cols[c] = np.clip(cols[c], 0.0, 1.0)
        xs = df[value].cast(pl.Float64).to_numpy()
        with np.errstate(invalid="ignore"):
            out_l = (xs < cols["laney_lcl"]) | (xs > cols["laney_ucl"])
            out_e = (cols["ewma"] < cols["ewma_lcl"]) | (cols["ewma"] > cols["ewma_ucl"])
        new = [pl.Series(c, cols[c]).fill_nan(None) for c in extra]
        return df.with_columns(*new, pl.Series("out_laney", out_l), pl.Series("out_ewma", out_e))

    return frame.map_batches(compute, schema=out_schema)


def yield_trend(
    die: pl.LazyFrame,
    runs: pl.LazyFrame,
    *,
    level: str = "lot",
    by: Sequence[str] = (),
    chart_by: Sequence[str] = ("product",),
    pass_bins: Sequence[int] | None = None,
    which: str = "final",
    k: float = 3.0,
    lam: float = 0.2,
    L: float = 3.0,
) -> pl.LazyFrame:
    """Yield run chart per lot (or wafer) in time order with Laney p' and EWMA limits.

    ``start_time`` is the first test start of the lot/wafer (from ``runs``); ``yield`` is the
    final (``which="final"``) or first-pass yield and ``n`` the die tested. One chart per
    ``chart_by`` group (a product; add "tester" or "insertion" to slice). See
    :func:`control_chart` for the limits.
    """
    if which not in ("final", "first"):
        raise BackendFabError(f"which={which!r} is unknown; use 'final' or 'first'")
    frame = resolve_retests(die, runs=runs, pass_bins=pass_bins)
    keys = list(dict.fromkeys([*chart_by, *level_keys(level, by)]))
    times = frame.group_by(keys).agg(start_time=pl.col("start_time").min())
    summary = yield_summary(die, level=level, by=[*by, *chart_by], pass_bins=pass_bins, runs=runs)
    value = "yield_final" if which == "final" else "yield_first_pass"
    nn = "n_tested" if which == "final" else "n_first_pass"
    summary = summary.join(
        times, on=keys, how="left", maintain_order="left", nulls_equal=True
    ).with_columns(pl.col(value).alias("yield"), pl.col(nn).alias("n"))
    # ties in time (wafers of one run) are ordered by their keys: the same chart every time
    order = ["start_time", *[c for c in keys if c not in chart_by]]
    return control_chart(
        summary, value="yield", n="n", order_by=order, by=list(chart_by), k=k, lam=lam, L=L
    )
