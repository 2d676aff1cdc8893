"""Score one lot: yield and bins, SYL/SBL, PAT, clusters, stacked map, sites, patterns, alarms.

This is the unit of work the engines map over lots (:func:`score_task` takes a batch of lots and
never raises for one lot: a lot that fails comes back as a failed :class:`LotOutcome`). It reads
the lake by path and returns frames and PNG bytes; it never writes.

Each analysis is the owning module's: :mod:`backend_fab.bins` (yield, Pareto, stacked map and
hot spots, site-to-site), :mod:`backend_fab.limits` (SYL/SBL), :mod:`backend_fab.pat` (PAT),
:mod:`backend_fab.spatial` (clusters, join-count statistics), :mod:`backend_fab.patterns`
(wafer pattern class) and :mod:`backend_fab.plot` (figures). Here they are put together, turned
into ``scores`` / ``dispositions`` / ``alarms`` rows and report material.
"""

from __future__ import annotations

import base64
import json
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import polars as pl

from backend_fab import schema
from backend_fab.nightly import faults
from backend_fab.nightly.recipe import NightlyRecipe
from backend_fab.report import LOT_FIGURES, LotReport

WAFER_LOT = ""  # wafer_id of a whole-lot row in scores and alarms


@dataclass(frozen=True)
class ScoreTask:
    """A batch of lots for one worker: ``lots`` is ``((lot_id, fingerprint), ...)``."""

    lake: str
    lots: tuple[tuple[str, str], ...]
    recipe: NightlyRecipe
    scored_at: datetime
    figures: bool = True
    limits: NightLimits | None = None


@dataclass
class LotOutcome:
    """The result of scoring one lot (frames conform to the canonical tables) or its error."""

    lot_id: str
    fingerprint: str
    recipe_hash: str
    pat_hash: str
    ok: bool
    scores: pl.DataFrame | None = None
    dispositions: pl.DataFrame | None = None
    alarms: pl.DataFrame | None = None
    report: LotReport | None = None
    n_tested: int = 0
    alarm_level: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    error_type: str = ""
    message: str = ""
    traceback: str = ""

    @classmethod
    def failure(
        cls, lot_id, fingerprint, recipe_hash, pat_hash, error_type, message, tb=""
    ) -> LotOutcome:
        return cls(
            lot_id=lot_id,
            fingerprint=fingerprint,
            recipe_hash=recipe_hash,
            pat_hash=pat_hash,
            ok=False,
            error_type=error_type,
            message=message,
            traceback=tb,
        )


def score_task(task: ScoreTask) -> list[LotOutcome]:
    """Score every lot of ``task`` (the function the engines map); one outcome per lot."""
    from backend_fab.lake import Lake

    lake = Lake(task.lake, create=False)
    out = []
    for lot_id, fingerprint in task.lots:
        try:
            out.append(
                score_lot(
                    lake,
                    lot_id,
                    fingerprint,
                    task.recipe,
                    scored_at=task.scored_at,
                    figures=task.figures,
                    night_limits=task.limits,
                )
            )
        except Exception as exc:
            out.append(
                LotOutcome.failure(
                    lot_id,
                    fingerprint,
                    task.recipe.hash,
                    task.recipe.pat_hash,
                    type(exc).__name__,
                    str(exc) or type(exc).__name__,
                    "".join(traceback.format_exception(exc)),
                )
            )
    return out


# --- loading --------------------------------------------------------------------------------


@dataclass
class LotData:
    """The lot's committed data restricted to the runs of its fingerprint."""

    lot_id: str
    product: str | None
    run_ids: list[str]
    die: pl.DataFrame
    runs: pl.DataFrame
    layouts: pl.DataFrame
    bins: pl.DataFrame
    lake: object

    def results(self) -> pl.LazyFrame:
        return self.lake.scan("results").filter(
            (pl.col("lot_id") == self.lot_id) & pl.col("run_id").is_in(self.run_ids)
        )

    def tests(self) -> pl.LazyFrame:
        return self.lake.scan("tests").filter(pl.col("run_id").is_in(self.run_ids))

    @property
    def start_time(self):
        return self.runs.get_column("start_time").min() if self.runs.height else None


def load_lot(lake, lot_id: str, run_ids: list[str]) -> LotData:
    """Read the lot's die, runs, bins and product layout (only the fingerprinted runs, so the
    scores match the fingerprint even if a run was ingested meanwhile)."""
    die = (
        lake.scan("die")
        .filter((pl.col("lot_id") == lot_id) & pl.col("run_id").is_in(run_ids))
        .sort("run_id", "part_seq")
        .collect()
    )
    runs = lake.scan("runs").filter(pl.col("run_id").is_in(run_ids)).collect()
    bins_t = lake.scan("bins").filter(pl.col("run_id").is_in(run_ids)).collect()
    products = die.get_column("product").drop_nulls().unique().sort().to_list()
    if not products:
        products = runs.get_column("product").drop_nulls().unique().sort().to_list()
    product = products[0] if products else None
    layouts = (
        lake.scan("layouts").filter(pl.col("product") == product).collect()
        if product is not None
        else schema.table("layouts").empty()
    )
    return LotData(lot_id, product, run_ids, die, runs, layouts, bins_t, lake)


def _pass_bins(recipe: NightlyRecipe) -> list[int]:
    return recipe.pass_bins


# --- the analyses ----------------------------------------------------------------------------


def lot_yields(data: LotData, recipe: NightlyRecipe) -> tuple[dict, pl.DataFrame]:
    """Whole-lot yield row (dict) and one row per wafer (bins.yield_summary).

    A lot tested at several insertions (FT1 then PBI) is followed through its flow: a unit's
    first-pass result is its first test, its final result its last one (runs ordered by start
    time), so the lot's final yield is the share of units that came through every insertion;
    :func:`insertion_yields` gives each insertion on its own.
    """
    from backend_fab import bins

    die = data.die.lazy()
    runs = data.runs.drop("insertion").lazy()
    layouts = data.layouts.lazy() if data.layouts.height else None
    pb = _pass_bins(recipe)
    per_wafer = bins.yield_summary(
        die, level="wafer", pass_bins=pb, runs=runs, layouts=layouts
    ).collect()
    # the lot is the sum of its wafers (and of the parts without a wafer): one pass over the die
    counts = ["n_tested", "n_good", "n_first_pass", "n_good_first_pass"]
    totals = {c: int(per_wafer.get_column(c).sum()) for c in counts}
    lot_row = {
        **totals,
        "yield_final": totals["n_good"] / totals["n_tested"] if totals["n_tested"] else None,
        "yield_first_pass": (
            totals["n_good_first_pass"] / totals["n_first_pass"] if totals["n_first_pass"] else None
        ),
    }
    return lot_row, per_wafer.filter(pl.col("wafer_id").is_not_null())


def insertion_yields(data: LotData, recipe: NightlyRecipe) -> pl.DataFrame:
    """First-pass and final yield of the lot per insertion (WS1, FT1, PBI ...), in test order."""
    from backend_fab import bins

    out = bins.yield_summary(
        data.die.lazy(),
        level="lot",
        by=["insertion"],
        pass_bins=_pass_bins(recipe),
        runs=data.runs.lazy(),
    ).collect()
    order = data.runs.group_by("insertion").agg(pl.col("start_time").min().alias("_t"))
    return (
        out.join(order, on="insertion", how="left", maintain_order="left")
        .sort("_t", nulls_last=True)
        .drop("_t")
    )


def lot_pareto(data: LotData, recipe: NightlyRecipe) -> pl.DataFrame:
    from backend_fab import bins

    return bins.bin_pareto(
        data.die.lazy(),
        kind="hbin",
        level="lot",
        pass_bins=_pass_bins(recipe),
        bins=data.bins.lazy(),
        runs=data.runs.lazy(),
    ).collect()


@dataclass(frozen=True)
class NightLimits:
    """Provisional SYL/SBL limits of a night, per product (for lots of the limits insertion).

    Used when the lake's ``limits`` table holds no SYL/SBL limits for a product. They come from
    the ``history_max_lots`` most recent lots of the product that started before the night's
    earliest lot of that product, so every lot of a night is judged against the same history,
    whatever engine scores it and in whatever order, and a night finished after a crash (same
    planned lots, kept in its journal) computes the same limits.
    """

    frames: dict[str, pl.DataFrame]
    notes: dict[str, str]


def _limits_runs(lake, recipe: NightlyRecipe) -> pl.LazyFrame:
    prefix = recipe.scoring.limits_insertion
    runs = lake.scan("runs").select("run_id", "product", "lot_id", "insertion", "start_time")
    if prefix:
        runs = runs.filter(pl.col("insertion").fill_null("").str.starts_with(prefix))
    return runs


def night_limits(lake, recipe: NightlyRecipe, lot_ids: Sequence[str]) -> NightLimits:
    """Compute the night's provisional SYL/SBL limits (see :class:`NightLimits`); collects."""
    from backend_fab import limits as lim
    from backend_fab.errors import LimitsError

    s = recipe.scoring
    runs = _limits_runs(lake, recipe).collect()
    night = runs.filter(pl.col("lot_id").is_in(list(lot_ids)))
    frames: dict[str, pl.DataFrame] = {}
    notes: dict[str, str] = {}
    saved = lake.scan("limits").filter(pl.col("limit_type").is_in(["SYL", "SBL"])).collect()
    for (product,), part in night.group_by("product", maintain_order=True):
        if product is None:
            continue
        if saved.filter(pl.col("product") == product).height:
            continue  # the lake's limits apply (evaluated per lot, at the lot's start)
        cutoff = part.get_column("start_time").min()
        per_lot = (
            runs.filter((pl.col("product") == product) & ~pl.col("lot_id").is_in(list(lot_ids)))
            .group_by("lot_id")
            .agg(pl.col("start_time").min().alias("start"), pl.col("run_id"))
        )
        if cutoff is not None:
            per_lot = per_lot.filter(pl.col("start") < cutoff)
        hist = per_lot.sort(["start", "lot_id"], descending=[True, False]).head(s.history_max_lots)
        if hist.height < s.history_min_lots:
            notes[product] = (
                f"SYL/SBL not evaluated: {hist.height} earlier lot(s) of {product} before this "
                f"night, need {s.history_min_lots} (AEC-Q002), and the lake has no saved limits"
            )
            continue
        run_ids = hist.get_column("run_id").explode().to_list()
        hist_die = lake.scan("die").filter(
            pl.col("lot_id").is_in(hist.get_column("lot_id").to_list())
            & pl.col("run_id").is_in(run_ids)
        )
        hist_runs = lake.scan("runs").filter(pl.col("run_id").is_in(run_ids))
        sets = []
        for level in ("lot", "wafer"):
            try:
                sets.append(
                    lim.syl_sbl_limits(
                        hist_die,
                        runs=hist_runs,
                        product=product,
                        level=level,
                        bins=list(s.sbl_bins) or None,
                        method=s.syl_method,
                        sbl_method=s.sbl_method,
                        min_lots=s.history_min_lots,
                        pass_bins=recipe.pass_bins,
                        created_at=cutoff,
                        valid_from=cutoff,
                    ).limits
                )
            except LimitsError as exc:
                notes[product] = f"SYL/SBL ({level}): {exc}"
        if sets:
            frames[product] = pl.concat(sets, how="vertical")
            notes[product] = (
                f"SYL/SBL provisional: from the {hist.height} lots of {product} before this night "
                f"(SYL {s.syl_method}, SBL {s.sbl_method}); the lake has no saved limits"
            )
    return NightLimits(frames, notes)


def syl_sbl(
    data: LotData, recipe: NightlyRecipe, night: NightLimits | None
) -> tuple[pl.DataFrame, str]:
    """Evaluate the lot and its wafers against SYL/SBL (limits.evaluate_limits).

    Limits in force in the lake's ``limits`` table at the lot's start win; otherwise the night's
    provisional limits of the product. Only runs of the limits insertion are evaluated. Returns
    the evaluation (empty when no limits apply) and a note saying which limits were used.
    """
    from backend_fab import limits as lim

    empty = pl.DataFrame()
    prefix = recipe.scoring.limits_insertion
    runs = data.runs
    if prefix:
        runs = runs.filter(pl.col("insertion").fill_null("").str.starts_with(prefix))
    if data.product is None or runs.height == 0:
        return empty, (
            f"SYL/SBL not evaluated: they apply to {prefix}* runs ([scoring] limits_insertion) "
            "and this lot has none"
            if prefix
            else "SYL/SBL not evaluated: no tester run in this lot"
        )
    die = data.die.filter(pl.col("run_id").is_in(runs.get_column("run_id").to_list()))
    saved = (
        data.lake.scan("limits")
        .filter((pl.col("product") == data.product) & pl.col("limit_type").is_in(["SYL", "SBL"]))
        .collect()
    )
    at = runs.get_column("start_time").min()
    if saved.height:
        in_force = lim.current_limits(saved, at=at)
        if in_force.height == 0:
            return empty, f"SYL/SBL not evaluated: no saved limit of {data.product} valid at {at}"
        ev = lim.evaluate_limits(die.lazy(), in_force, runs=runs.lazy(), at=at)
        return ev, f"SYL/SBL from the lake's limits table ({in_force.height} limits in force)"
    if night is None or data.product not in night.frames:
        note = (night.notes.get(data.product) if night else None) or "SYL/SBL not evaluated"
        return empty, note
    ev = lim.evaluate_limits(die.lazy(), night.frames[data.product], runs=runs.lazy())
    return ev, night.notes[data.product]


def stacked_map(data: LotData, recipe: NightlyRecipe) -> pl.DataFrame:
    """The lot's stacked fail map with its significance layer (bins.stacked_map): one row per
    die position; empty when the lot has fewer than two wafers with coordinates."""
    from backend_fab import bins

    die = data.die.filter(pl.col("x").is_not_null() & pl.col("wafer_id").is_not_null())
    if die.get_column("wafer_id").n_unique() < 2:
        return pl.DataFrame()
    s = recipe.scoring
    return bins.stacked_map(
        die.lazy(),
        level="lot",
        pass_bins=_pass_bins(recipe),
        null=s.stack_null,
        fdr=s.stack_fdr,
        runs=data.runs.lazy(),
    ).collect()


def site_differences(data: LotData, recipe: NightlyRecipe):
    """Site-to-site comparison of the lot (bins.site_comparison), or None for single-site data."""
    from backend_fab import bins

    die = data.die.filter(pl.col("site").is_not_null())
    if die.get_column("site").n_unique() < 2:
        return None
    s = recipe.scoring
    strata = s.site_strata
    if strata in ("wafer", "wafer_ring") and die.get_column("wafer_id").null_count() == die.height:
        strata = None
    return bins.site_comparison(
        die.lazy(),
        level="lot",
        strata=strata,
        pass_bins=_pass_bins(recipe),
        layouts=data.layouts if data.layouts.height else None,
        alpha=s.site_alpha,
        min_delta=s.site_min_delta,
        mc_samples=s.site_mc_samples,
        runs=data.runs.lazy(),
    )


# --- alarms ----------------------------------------------------------------------------------


class AlarmSet:
    """Alarm rows of one lot; figures are drawn only when the report wants them."""

    def __init__(self, data: LotData, recipe_hash: str, raised_at: datetime, figures: bool):
        self.data = data
        self.recipe_hash = recipe_hash
        self.raised_at = raised_at
        self.figures = figures
        self.rows: list[dict] = []

    def add(
        self, wafer_id: str | None, rule: str, key: str, level: int, evidence: str, figure=None
    ):
        """Add an alarm; ``figure`` is a callable returning PNG bytes (or None)."""
        if level <= 0:
            return
        png = figure() if (self.figures and figure is not None) else None
        self.rows.append(
            {
                "product": self.data.product,
                "lot_id": self.data.lot_id,
                "wafer_id": wafer_id or WAFER_LOT,
                "recipe_hash": self.recipe_hash,
                "rule": rule,
                "key": key,
                "level": int(level),
                "evidence": evidence,
                "figure": base64.b64encode(png).decode("ascii") if png else None,
                "raised_at": self.raised_at,
            }
        )

    def frame(self) -> pl.DataFrame:
        spec = schema.table("alarms")
        if not self.rows:
            return spec.empty()
        return schema.conform(
            "alarms", pl.DataFrame(self.rows, schema=spec.polars_schema, orient="row")
        )

    def level(self, wafer_id: str | None = None) -> int:
        """Highest level raised for the lot (``wafer_id`` None) or for one wafer."""
        rows = (
            self.rows if wafer_id is None else [r for r in self.rows if r["wafer_id"] == wafer_id]
        )
        return max((r["level"] for r in rows), default=0)


def _level_of(value: float | None, pair) -> int:
    if value is None:
        return 0
    return 2 if value >= pair[1] else 1 if value >= pair[0] else 0


# --- one lot ---------------------------------------------------------------------------------


class _Clock:
    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._t
        self._t = now


def score_lot(
    lake,
    lot_id: str,
    fingerprint: str,
    recipe: NightlyRecipe,
    *,
    scored_at: datetime,
    figures: bool = True,
    night_limits: NightLimits | None = None,
) -> LotOutcome:
    """Score one lot; raises on bad data (``score_task`` turns that into a failed outcome).

    ``night_limits``: the night's provisional SYL/SBL limits (:func:`night_limits`)."""
    faults.maybe_fail_lot(lot_id)
    clock = _Clock()
    run_ids = [r for r in fingerprint.split(",") if r]
    data = load_lot(lake, lot_id, run_ids)
    clock.lap("load")
    scores = LotScores(data, recipe, fingerprint, scored_at, figures, night_limits)
    if data.die.height == 0:
        # e.g. an assembly lot: recorded as scored (nothing tested) so it is not retried nightly
        scores.notes.append(f"no tested parts in the lot's runs ({len(run_ids)} run(s))")
    else:
        scores.run(clock)
    return scores.outcome(clock.seconds)


class LotScores:
    """Runs the analyses of one lot and turns them into rows, alarms and report material."""

    def __init__(
        self,
        data: LotData,
        recipe: NightlyRecipe,
        fingerprint: str,
        scored_at: datetime,
        figures: bool,
        night_limits: NightLimits | None = None,
    ):
        self.data = data
        self.night_limits = night_limits
        self.recipe = recipe
        self.fingerprint = fingerprint
        self.scored_at = scored_at
        self.figures = figures
        # an alarm always carries its figure (it is part of the alarm record); ``figures`` is
        # about the report's lot figures
        self.alarms = AlarmSet(data, recipe.hash, scored_at, True)
        self.notes: list[str] = []
        self.wafer_ids = sorted(data.die.get_column("wafer_id").drop_nulls().unique().to_list())
        self.lot_yield: dict = {}
        self.wafer_yield = pl.DataFrame()
        self.pareto = pl.DataFrame()
        self.limits_eval = pl.DataFrame()
        self.hot_spots = pl.DataFrame()
        self.stack = pl.DataFrame()
        self.sites = None
        # per-wafer columns filled by the stages: wafer_id -> value
        self.wafer_cols: dict[str, dict[str, object]] = {w: {} for w in self.wafer_ids}
        self.dispositions = schema.table("dispositions").empty()
        self.pat_loss: dict[str, float] = {}
        self.yield_after_pat: float | None = None
        self.figures_png: dict[str, bytes] = {}
        self.pat = None
        self._final_mapped = None

    # each stage fills attributes and raises alarms
    def run(self, clock: _Clock) -> None:
        self.stage_yield()
        clock.lap("bins")
        self.stage_limits()
        clock.lap("limits")
        self.stage_pat()
        clock.lap("pat")
        self.stage_spatial()
        clock.lap("spatial")
        self.stage_patterns()
        clock.lap("patterns")
        self.stage_stack_and_sites()
        clock.lap("stack_sites")
        if self.figures:
            self.stage_figures()
            clock.lap("figures")

    def stage_yield(self) -> None:
        self.lot_yield, self.wafer_yield = lot_yields(self.data, self.recipe)
        self.pareto = lot_pareto(self.data, self.recipe)
        if self.data.runs.get_column("insertion").n_unique() > 1:
            per = insertion_yields(self.data, self.recipe)
            self.notes.append(
                "yield through the flow (a unit counts as good when its last test passed); per "
                "insertion: "
                + "; ".join(
                    f"{r['insertion']} {r['n_tested']:,} tested, first pass "
                    f"{r['yield_first_pass']:.2%}, final {r['yield_final']:.2%}"
                    for r in per.iter_rows(named=True)
                )
            )

    def stage_limits(self) -> None:
        ev, note = syl_sbl(self.data, self.recipe, self.night_limits)
        self.notes.append(note)
        self.limits_eval = ev
        if ev.height == 0:
            return
        a = self.recipe.alarms
        for row in ev.filter(pl.col("level") > 0).iter_rows(named=True):
            rule = row["limit_type"]
            if (rule == "SYL" and not a.syl) or (rule == "SBL" and not a.sbl):
                continue
            wafer = row["wafer_id"] or None
            if wafer is not None:
                fig = "wafer:" + wafer
            else:
                fig = "gallery" if rule == "SYL" else "pareto"
            self.alarms.add(
                wafer,
                rule,
                f"{row['scope']}:{row['key']}",
                row["level"],
                row["reason"],
                figure=lambda name=fig: self.figure(name),
            )

    def stage_pat(self) -> None:
        """PAT over the lot (backend_fab.pat.run_pat): dispositions, yield loss per rule,
        yield after PAT and the recipe's PAT yield-loss alarm."""
        from backend_fab.pat import run_pat

        d = self.data
        insertion = self.recipe.pat.data["recipe"].get("insertion") or ""
        runs = d.runs
        if insertion:
            runs = runs.filter(pl.col("insertion").fill_null("").str.starts_with(insertion))
        if runs.height == 0:
            found = ", ".join(sorted({str(i) for i in d.runs.get_column("insertion").to_list()}))
            self.notes.append(
                f"PAT not applied: the PAT recipe screens insertion {insertion}*, this lot has {found}"
            )
            return
        run_ids = runs.get_column("run_id").to_list()
        die = d.die.filter(pl.col("run_id").is_in(run_ids))
        spat = (
            d.lake.scan("limits")
            .filter((pl.col("limit_type") == "SPAT") & (pl.col("product") == d.product))
            .collect()
        )
        res = run_pat(
            {
                "die": die,
                "results": d.results().filter(pl.col("run_id").is_in(run_ids)),
                "tests": d.tests().filter(pl.col("run_id").is_in(run_ids)),
                "layouts": d.layouts if d.layouts.height else None,
                "limits": spat,
                "runs": runs,
            },
            self.recipe.pat,
        )
        self.pat = res
        self.dispositions = res.dispositions
        self.notes.extend(f"PAT: {n}" for n in res.notes)
        lot = res.summary("lot")
        if lot.height:
            row = lot.row(0, named=True)
            self.pat_loss = json.loads(row["pat_loss"] or "{}")
            self.yield_after_pat = row["yield_after"]
        for row in res.summary("wafer").iter_rows(named=True):
            cols = self.wafer_cols.get(row["wafer_id"])
            if cols is not None:
                cols["yield_after_pat"] = row["yield_after"]
                cols["pat_loss"] = json.loads(row["pat_loss"] or "{}")
        for row in res.alarms(self.scored_at).iter_rows(named=True):
            self.alarms.add(
                row["wafer_id"] or None,
                "pat-loss",
                row["key"],
                row["level"],
                row["evidence"],
                figure=lambda: self.figure("pat_loss"),
            )

    def final_mapped_die(self) -> pl.DataFrame:
        """The final instance of every die with wafer coordinates (retests resolved across runs,
        bins.select_instances), in the die table's columns: the input of the map analyses."""
        if getattr(self, "_final_mapped", None) is None:
            from backend_fab import bins

            d = self.data
            mapped = d.die.filter(pl.col("x").is_not_null() & pl.col("wafer_id").is_not_null())
            # sorted: the map analyses number wafers in order of appearance, and that order
            # must not depend on the thread count or the engine
            final = (
                bins.select_instances(
                    mapped.lazy(), "final", runs=d.runs.lazy(), pass_bins=_pass_bins(self.recipe)
                )
                .select(mapped.columns)
                .with_columns(final=pl.lit(True))
                .sort("wafer_id", "y", "x", "run_id", "part_seq")
                .collect()
            )
            self._final_mapped = final
        return self._final_mapped

    def layout(self):
        """The product's :class:`~backend_fab.layout.Layout`, or None when the lake has none."""
        if self.data.layouts.height == 0:
            return None
        from backend_fab.layout import Layout

        return Layout.from_row(self.data.layouts.row(0, named=True))

    def stage_spatial(self) -> None:
        """Per wafer: join-count z and permutation test, clusters (backend_fab.spatial); an alarm
        for wafers whose fails cluster significantly with a large enough cluster."""
        from backend_fab import spatial

        die = self.final_mapped_die()
        if die.height == 0:
            return
        s = self.recipe.scoring
        a = self.recipe.alarms
        layout = self.layout()
        pb = _pass_bins(self.recipe)
        stats = spatial.wafer_spatial_stats(
            die,
            n_perm=s.cluster_permutations,
            alpha=s.cluster_alpha,
            cluster_connectivity=s.connectivity,
            layout=layout,
            pass_bins=pb,
        ).collect()
        clusters = spatial.cluster_table(
            die, connectivity=s.connectivity, layout=layout, pass_bins=pb
        ).collect()
        n_die = die.group_by("wafer_id").len()
        n_die = dict(
            zip(
                n_die.get_column("wafer_id").to_list(),
                n_die.get_column("len").to_list(),
                strict=True,
            )
        )
        for row in stats.iter_rows(named=True):
            wafer = row["wafer_id"]
            cols = self.wafer_cols.get(wafer)
            if cols is None:
                continue
            min_size = max(s.min_cluster_size, round(n_die.get(wafer, 0) * s.min_cluster_fraction))
            big = clusters.filter((pl.col("wafer_id") == wafer) & (pl.col("size") >= min_size))
            cols["n_clusters"] = big.height
            cols["largest_cluster"] = int(row["largest_cluster"] or 0)
            cols["join_count_z"] = row["bb_z"]
            z = row["bb_z"]
            if z is None or not row["clustered"]:
                continue
            largest = int(row["largest_cluster"] or 0)
            level = 0
            if z >= a.cluster_z[1] and largest >= a.cluster_min_die[1]:
                level = 2
            elif z >= a.cluster_z[0] and largest >= a.cluster_min_die[0]:
                level = 1
            if level:
                top = big.sort("size", descending=True).head(1)
                shape = ""
                if top.height:
                    t = top.row(0, named=True)
                    shape = (
                        f"; largest cluster at ({t['centroid_x']:.0f}, {t['centroid_y']:.0f}), "
                        f"r/R {t['radius']:.2f}, linearity {t['linearity']:.2f}"
                        + (", touches the edge" if t["touches_edge"] else "")
                    )
                p = row["bb_p_perm"] if row["bb_p_perm"] is not None else row["bb_p_normal"]
                self.alarms.add(
                    wafer,
                    "cluster",
                    "join-count",
                    level,
                    f"fails cluster: join-count z = {z:.1f} (permutation p = {p:.3g}), "
                    f"{row['n_fail']} fails, {big.height} cluster(s) of >= {min_size} die, "
                    f"largest {largest} die{shape}",
                    figure=lambda w=wafer: self.figure("wafer:" + w),
                )

    def stage_patterns(self) -> None:
        """Failure-pattern class of each wafer map (backend_fab.patterns.classify_wafers); an
        alarm for the classes the recipe names, when the classifier is confident enough."""
        from backend_fab.patterns import classify_wafers

        die = self.final_mapped_die()
        if die.height == 0:
            return
        s = self.recipe.scoring
        named = self.recipe.alarms.patterns
        classes = classify_wafers(
            die, threshold=s.pattern_min_probability, pass_bins=_pass_bins(self.recipe)
        ).collect()
        for row in classes.iter_rows(named=True):
            wafer = row["wafer_id"]
            cols = self.wafer_cols.get(wafer)
            if cols is None:
                continue
            cls, prob = row["pattern_class"], row["probability"]
            cols["pattern_class"] = cls
            cols["pattern_probability"] = prob
            level = named.get(cls, 0)
            if level:
                why = ", ".join(row.get("top_features") or [])
                self.alarms.add(
                    wafer,
                    "pattern",
                    cls,
                    level,
                    f"wafer map classified {cls} (probability {prob:.2f}; runner-up "
                    f"{row['runner_up']} {row['runner_up_probability']:.2f}; fail fraction "
                    f"{row['fail_fraction']:.1%})" + (f"; driven by {why}" if why else ""),
                    figure=lambda w=wafer: self.figure("wafer:" + w),
                )

    def lot_pattern(self) -> tuple[str | None, float | None]:
        """The lot's dominant pattern: the class of most wafers other than none/unknown (ties:
        alphabetical), with the share of wafers that have it; "none" when no wafer has one."""
        found = [c.get("pattern_class") for c in self.wafer_cols.values() if c.get("pattern_class")]
        if not found:
            return None, None
        defects = [c for c in found if c not in ("none", "unknown")]
        if not defects:
            return "none", found.count("none") / len(found)
        best = sorted(set(defects), key=lambda c: (-defects.count(c), c))[0]
        return best, defects.count(best) / len(found)

    def stage_stack_and_sites(self) -> None:
        a = self.recipe.alarms
        self.stack = stacked_map(self.data, self.recipe)
        if self.stack.height:
            # ties broken by position; q and p rounded so that last-bit differences of parallel
            # sums (thread count, engine) do not reorder the evidence
            self.hot_spots = self.stack.filter(pl.col("significant").fill_null(False)).sort(
                pl.col("q_value").round_sig_figs(9), pl.col("p_value").round_sig_figs(9), "y", "x"
            )
        n_hot = self.hot_spots.height
        if n_hot:
            top = self.hot_spots.head(5)
            where = ", ".join(
                f"({r['x']},{r['y']}) {r['n_fail']}/{r['n_tested']} q={r['q_value']:.1e}"
                for r in top.iter_rows(named=True)
            )
            self.alarms.add(
                None,
                "stacked-map",
                "hot-spots",
                _level_of(n_hot, a.hot_spots),
                f"{n_hot} die position(s) fail on more wafers than chance allows "
                f"(BH FDR {self.recipe.scoring.stack_fdr:g}): {where}",
                figure=lambda: self.figure("stacked"),
            )
        self.sites = site_differences(self.data, self.recipe)
        if self.sites is not None:
            flagged = self.sites.flagged()
            level = _level_of(flagged.height, a.site_flags)
            for r in flagged.iter_rows(named=True):
                delta = r["delta_adjusted"] if r["delta_adjusted"] is not None else r["delta"]
                p = r["p_cmh_adj"] if r["p_cmh_adj"] is not None else r["p_adj"]
                self.alarms.add(
                    None,
                    "site-to-site",
                    f"site:{r['site']}",
                    level,
                    f"site {r['site']} yield {r['yield']:.2%} ({r['n_good']}/{r['n_tested']}), "
                    f"{delta:+.2%} vs the other sites (stratified by "
                    f"{self.recipe.scoring.site_strata or 'nothing'}), adjusted p={p:.2g}",
                    figure=lambda: self.figure("sites"),
                )

    def figure(self, name: str) -> bytes | None:
        """PNG of one of the lot's figures (drawn once)."""
        if name not in self.figures_png:
            png = _draw(self, name)
            if png is None:
                return None
            self.figures_png[name] = png
        return self.figures_png[name]

    def stage_figures(self) -> None:
        for name in LOT_FIGURES:
            self.figure(name)

    # --- output ---------------------------------------------------------------------------

    def _levels(self, wafer_id: str) -> tuple[int | None, int | None]:
        ev = self.limits_eval
        if ev.height == 0:
            return None, None
        rows = ev.filter(pl.col("wafer_id") == wafer_id)
        if rows.height == 0:
            return None, None
        syl = rows.filter(pl.col("limit_type") == "SYL").get_column("level").max()
        sbl = rows.filter(pl.col("limit_type") == "SBL").get_column("level").max()
        return syl, sbl

    def scores_frame(self) -> pl.DataFrame:
        d = self.data
        base = {
            "product": d.product,
            "lot_id": d.lot_id,
            "recipe_hash": self.recipe.hash,
            "run_ids": self.fingerprint,
            "scored_at": self.scored_at,
        }
        rows = []
        lot_class, lot_share = self.lot_pattern()
        ly = self.lot_yield
        syl, sbl = self._levels(WAFER_LOT)
        rows.append(
            {
                **base,
                "wafer_id": WAFER_LOT,
                "n_tested": ly.get("n_tested", 0),
                "n_good": ly.get("n_good", 0),
                "yield_first_pass": ly.get("yield_first_pass"),
                "yield_final": ly.get("yield_final"),
                "yield_after_pat": self.yield_after_pat,
                "syl_level": syl,
                "sbl_level": sbl,
                "pat_loss": json.dumps(self.pat_loss, sort_keys=True),
                "n_clusters": sum(int(c.get("n_clusters") or 0) for c in self.wafer_cols.values())
                if self.wafer_cols
                else None,
                "largest_cluster": max(
                    (int(c.get("largest_cluster") or 0) for c in self.wafer_cols.values()),
                    default=None,
                ),
                "join_count_z": max(
                    (
                        c["join_count_z"]
                        for c in self.wafer_cols.values()
                        if c.get("join_count_z") is not None
                    ),
                    default=None,
                ),
                "pattern_class": lot_class,
                "pattern_probability": lot_share,
                "alarm_level": self.alarms.level(),
            }
        )
        for w in self.wafer_yield.iter_rows(named=True):
            wid = w["wafer_id"]
            cols = self.wafer_cols.get(wid, {})
            syl, sbl = self._levels(wid)
            wafer_alarm = max(self.alarms.level(wid), 0)
            rows.append(
                {
                    **base,
                    "wafer_id": wid,
                    "n_tested": w["n_tested"],
                    "n_good": w["n_good"],
                    "yield_first_pass": w["yield_first_pass"],
                    "yield_final": w["yield_final"],
                    "yield_after_pat": cols.get("yield_after_pat"),
                    "syl_level": syl,
                    "sbl_level": sbl,
                    "pat_loss": json.dumps(cols.get("pat_loss", {}), sort_keys=True),
                    "n_clusters": cols.get("n_clusters"),
                    "largest_cluster": cols.get("largest_cluster"),
                    "join_count_z": cols.get("join_count_z"),
                    "pattern_class": cols.get("pattern_class"),
                    "pattern_probability": cols.get("pattern_probability"),
                    "alarm_level": wafer_alarm,
                }
            )
        spec = schema.table("scores")
        return schema.conform("scores", pl.DataFrame(rows, schema=spec.polars_schema, orient="row"))

    def report(self, scores: pl.DataFrame) -> LotReport:
        d = self.data
        lot = scores.filter(pl.col("wafer_id") == WAFER_LOT).row(0, named=True)
        pareto = []
        if self.pareto.height:
            n_tested = int(self.pareto.get_column("n_tested").max())
            cum = 0
            for r in self.pareto.sort("rank").iter_rows(named=True):
                cum += r["count"]
                pareto.append(
                    {
                        "kind": "H",
                        "bin": int(r["bin"]),
                        "name": r["name"],
                        "count": int(r["count"]),
                        "fraction": r["fraction"],
                        "cumulative": cum / n_tested if n_tested else None,
                    }
                )
        wafers = [
            {
                k: r[k]
                for k in (
                    "wafer_id",
                    "n_tested",
                    "n_good",
                    "yield_final",
                    "yield_after_pat",
                    "n_clusters",
                    "largest_cluster",
                    "join_count_z",
                    "pattern_class",
                    "pattern_probability",
                    "alarm_level",
                )
            }
            for r in scores.filter(pl.col("wafer_id") != WAFER_LOT).iter_rows(named=True)
        ]
        return LotReport(
            lot_id=d.lot_id,
            product=d.product,
            run_ids=list(d.run_ids),
            n_wafers=len(self.wafer_ids),
            n_tested=int(lot["n_tested"] or 0),
            n_good=int(lot["n_good"] or 0),
            yield_first_pass=lot["yield_first_pass"],
            yield_final=lot["yield_final"],
            yield_after_pat=lot["yield_after_pat"],
            syl_level=lot["syl_level"],
            sbl_level=lot["sbl_level"],
            alarm_level=int(lot["alarm_level"] or 0),
            pat_loss=dict(self.pat_loss),
            pareto=pareto,
            wafers=wafers,
            notes=[n for n in self.notes if n],
            figures={k: v for k, v in self.figures_png.items() if k in LOT_FIGURES},
        )

    def outcome(self, seconds: dict[str, float]) -> LotOutcome:
        scores = self.scores_frame()
        alarms = self.alarms.frame()
        disp = schema.validate("dispositions", self.dispositions)
        lot_level = int(scores.filter(pl.col("wafer_id") == WAFER_LOT).item(0, "alarm_level") or 0)
        return LotOutcome(
            lot_id=self.data.lot_id,
            fingerprint=self.fingerprint,
            recipe_hash=self.recipe.hash,
            pat_hash=self.recipe.pat_hash,
            ok=True,
            scores=scores,
            dispositions=disp,
            alarms=alarms,
            report=self.report(scores),
            n_tested=int(self.lot_yield.get("n_tested") or 0),
            alarm_level=lot_level,
            seconds=seconds,
        )


def rebuild_lot_report(
    lake,
    lot_id: str,
    recipe: NightlyRecipe,
    *,
    figures: bool = True,
    night_limits: NightLimits | None = None,
) -> LotReport:
    """Report material of a lot already scored under ``recipe`` (for a night finished by a later
    run whose night folder lacks it): scored again from the lake, nothing written."""
    row = (
        lake.scan("scores")
        .filter(
            (pl.col("lot_id") == lot_id)
            & (pl.col("recipe_hash") == recipe.hash)
            & (pl.col("wafer_id") == WAFER_LOT)
        )
        .collect()
    )
    if row.height == 0:
        raise ValueError(f"lot {lot_id!r} has no scores under recipe {recipe.hash}")
    fingerprint = row.item(0, "run_ids")
    outcome = score_lot(
        lake,
        lot_id,
        fingerprint,
        recipe,
        scored_at=row.item(0, "scored_at"),
        figures=figures,
        night_limits=night_limits,
    )
    return outcome.report


#: Resolution of report figures (dots per inch): small files, still legible die.
FIGURE_DPI = 72


def _draw(lot: LotScores, name: str) -> bytes | None:
    """Draw figure ``name`` of a lot with :mod:`backend_fab.plot` (None: nothing to draw).

    Names: the report's lot figures (:data:`backend_fab.report.LOT_FIGURES`), ``sites`` and
    ``wafer:<wafer_id>`` (a wafer map, PAT re-binned die in their rule colours).
    """
    from backend_fab import plot
    from backend_fab.report import pat_loss_figure, png_bytes

    d = lot.data
    pb = _pass_bins(lot.recipe)
    layout = d.layouts if d.layouts.height else None
    mapped = d.die.filter(pl.col("x").is_not_null() & pl.col("wafer_id").is_not_null())
    if name == "pareto":
        if lot.pareto.height == 0:
            return None
        fig = plot.pareto_figure(lot.pareto, pass_bins=pb, title=f"lot {d.lot_id}: hard-bin Pareto")
    elif name == "gallery":
        if mapped.height == 0:
            return None
        fig = plot.lot_gallery(mapped, lot_id=d.lot_id, layout=layout, pass_bins=pb, panel=2.0)
    elif name == "stacked":
        if lot.stack.height == 0:
            return None
        fig = plot.stacked_map_figure(lot.stack, layout=layout)
    elif name == "pat_loss":
        if not any(v > 0 for v in lot.pat_loss.values()):
            return None
        fig = pat_loss_figure(lot.pat_loss, title=f"lot {d.lot_id}: PAT yield loss per rule")
    elif name == "sites":
        if lot.sites is None:
            return None
        fig = plot.site_figure(lot.sites)
    elif name.startswith("wafer:"):
        wafer = name.split(":", 1)[1]
        one = mapped.filter(pl.col("wafer_id") == wafer)
        if one.height == 0:
            return None
        disp = lot.dispositions if lot.dispositions.height else None
        fig = plot.wafer_map(
            one,
            lot_id=d.lot_id,
            wafer_id=wafer,
            color_by="disposition" if disp is not None else "hbin",
            dispositions=disp,
            layout=layout,
            pass_bins=pb,
            figsize=(4.5, 4.5),
        )
    else:
        raise ValueError(f"unknown figure {name!r}")
    return png_bytes(fig, dpi=FIGURE_DPI)
