"""The PAT engine: run a recipe over the final die of one or more lots.

Flow of :func:`run_pat`:

1. **Die.** The final instance of every die (retests resolved, :func:`backend_fab.bins.
   resolve_retests`), sorted by product, lot, wafer, run and part; a die is good when its hard
   bin is in the recipe's ``pass_bins``. Only good die can receive a PAT bin.
2. **Parametric values.** Results of the final die (``[tests]`` selection), read run by run, are
   grouped by (test, wafer) with a counting sort (:mod:`._kernels`).
3. **Rules.** Every enabled rule runs on the *tested* data independently (a rule never sees
   another rule's bins), so every reason of every die is kept:
   SPAT (static limits from the ``limits`` table), DPAT (limits from the current population, per
   wafer or lot, clamped inside the static and spec limits), NNR (residual to the neighbourhood
   median, :func:`backend_fab_kernels.nnr.nnr_residuals`), IDDQ-delta (post - pre stress),
   GDBN (:func:`backend_fab_kernels.gdbn.gdbn`), cluster inking, reticle repeats and Z-PAT.
4. **Dispositions.** One row per (die, rule, test); the die's PAT bin is the bin of the first rule
   in the recipe's precedence that flagged it (``final_rule``); ``reason_bits`` ORs every rule
   that flagged the die. The die table is re-binned, and the yield loss per rule is counted.

Same input and recipe give the same bytes: every step is deterministic and outputs are sorted.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import polars as pl

from backend_fab import bins as _bins
from backend_fab.errors import BackendFabError
from backend_fab.pat import _kernels as K
from backend_fab.pat.recipe import REASON_BITS, RULES, Recipe, load_recipe

__all__ = ["SHAPE_FACTORS", "PatResult", "classify_shape", "run_pat", "run_pat_frames"]

_DIE_COLS = [
    "run_id",
    "part_seq",
    "product",
    "lot_id",
    "wafer_id",
    "site",
    "x",
    "y",
    "hbin",
    "sbin",
]

#: Head (low side) / tail (high side) factors of robust σ for the distribution-aware DPAT, per
#: shape and severity (DOMAIN.md §2.2, Galaxy "Smart & Adaptive").
SHAPE_FACTORS: dict[str, dict[str, tuple[float, float]]] = {
    "gaussian": {"near": (6, 6), "medium": (9, 9), "far": (12, 12)},
    "tail_high": {"near": (6, 7), "medium": (9, 10), "far": (12, 14)},
    "tail_low": {"near": (7, 6), "medium": (10, 9), "far": (14, 12)},
    "two_tails": {"near": (7, 7), "medium": (10, 10), "far": (14, 14)},
    "lognormal": {"near": (3, 7), "medium": (4, 10), "far": (6, 14)},
    "multimodal": {"near": (6, 6), "medium": (9, 9), "far": (12, 12)},
    "clamped_low": {"near": (3, 6), "medium": (4, 9), "far": (6, 12)},
    "clamped_high": {"near": (6, 3), "medium": (9, 4), "far": (12, 6)},
    "double_clamped": {"near": (3, 3), "medium": (4, 4), "far": (6, 6)},
    "category": {"near": (6, 6), "medium": (9, 9), "far": (12, 12)},
    "unknown": {"near": (6, 6), "medium": (9, 9), "far": (12, 12)},
}


# --- result -----------------------------------------------------------------------------------


@dataclass
class PatResult:
    """What :func:`run_pat` returns.

    * ``dispositions``: rows of the ``dispositions`` table (schema.DISPOSITIONS): every reason of
      every flagged die; ``new_bin`` is the rule's bin, ``final_rule`` marks the row whose bin the
      die keeps; ``reason_bits`` ORs all the die's rules; map rules have ``test_num`` -1.
    * ``die``: the input die table (every instance) with the final instances of flagged die
      re-binned (``recipe.rebin``) and ``passed`` false.
    * ``yield_loss``: per (product, lot_id, wafer_id; "" = the whole lot) and rule (plus
      "total"): ``n_tested``, ``n_good_before``, ``n_flagged`` (die with this reason),
      ``n_binned`` (die that keep this rule's bin), ``loss`` = n_binned / n_tested,
      ``yield_before``, ``yield_after``.
    * ``limits``: the parametric limits used per rule, scope and test.
    * ``notes``: rules or tests skipped, and why. ``timings``: seconds per stage.
    """

    recipe: Recipe
    dispositions: pl.DataFrame
    die: pl.DataFrame
    yield_loss: pl.DataFrame
    limits: pl.DataFrame
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def recipe_hash(self) -> str:
        return self.recipe.hash

    def summary(self, level: str = "lot") -> pl.DataFrame:
        """Per lot (or wafer): tested, good before/after, yield before/after, the loss per rule
        as a JSON object (the ``scores.pat_loss`` column) and the alarm level."""
        if level not in ("lot", "wafer"):
            raise BackendFabError(f"level={level!r}: use 'lot' or 'wafer'")
        yl = self.yield_loss
        yl = (
            yl.filter(pl.col("wafer_id") == "")
            if level == "lot"
            else yl.filter(pl.col("wafer_id") != "")
        )
        keys = ["product", "lot_id", "wafer_id"]
        lo1, lo2 = self.recipe.data["alarm"]["pat_loss"]
        total = yl.filter(pl.col("rule") == "total").select(
            *keys, "n_tested", "n_good_before", "n_binned", "yield_before", "yield_after", "loss"
        )
        per_rule = (
            yl.filter(pl.col("rule") != "total")
            .sort([*keys, "rule"])
            .group_by(keys, maintain_order=True)
            .agg(_rules=pl.col("rule"), _loss=pl.col("loss"))
        )
        rows = []
        for r in per_rule.iter_rows(named=True):
            loss = {k: round(float(v), 10) for k, v in zip(r["_rules"], r["_loss"], strict=True)}
            rows.append({**{k: r[k] for k in keys}, "pat_loss": json.dumps(loss, sort_keys=True)})
        loss_json = pl.DataFrame(
            rows, schema={**dict.fromkeys(keys, pl.String), "pat_loss": pl.String}, orient="row"
        )
        out = total.join(loss_json, on=keys, how="left", maintain_order="left").with_columns(
            n_good_after=pl.col("n_good_before") - pl.col("n_binned"),
            alarm_level=pl.when(pl.col("loss") > lo2)
            .then(2)
            .when(pl.col("loss") > lo1)
            .then(1)
            .otherwise(0)
            .cast(pl.Int16),
            recipe_hash=pl.lit(self.recipe.hash),
        )
        return out.rename({"loss": "pat_loss_total"}).sort(keys)

    def alarms(self, raised_at: datetime | None = None) -> pl.DataFrame:
        """Rows of the ``alarms`` table for lots (or wafers, ``[alarm].scope``) whose PAT yield
        loss exceeds the recipe's ``[alarm].pat_loss`` levels (Galaxy's yield-loss alarm)."""
        from backend_fab import schema

        scope = self.recipe.data["alarm"]["scope"]
        lo1, lo2 = self.recipe.data["alarm"]["pat_loss"]
        s = self.summary(scope).filter(pl.col("alarm_level") > 0)
        raised_at = raised_at or datetime.now(UTC).replace(microsecond=0)
        rows = []
        for r in s.iter_rows(named=True):
            lim = lo2 if r["alarm_level"] == 2 else lo1
            rows.append(
                {
                    "product": r["product"],
                    "lot_id": r["lot_id"],
                    "wafer_id": r["wafer_id"],
                    "recipe_hash": self.recipe.hash,
                    "rule": "pat_loss",
                    "key": "total",
                    "level": r["alarm_level"],
                    "evidence": f"PAT yield loss {r['pat_loss_total']:.2%} "
                    f"({r['n_binned']}/{r['n_tested']} die) above level {r['alarm_level']} "
                    f"limit {lim:.2%}; per rule {r['pat_loss']}",
                    "figure": None,
                    "raised_at": raised_at,
                }
            )
        frame = pl.DataFrame(rows, schema=schema.table("alarms").polars_schema, orient="row")
        return schema.validate("alarms", frame)

    def write(self, lake) -> int:
        """Replace this recipe's dispositions of the scored lots in the lake (keyed by
        (lot_id, recipe_hash)); returns the rows written."""
        from backend_fab import schema

        frame = schema.validate("dispositions", self.dispositions)
        if frame.height == 0:
            return 0
        return lake.replace("dispositions", frame, by=("lot_id", "recipe_hash"))

    def __repr__(self) -> str:
        final = self.dispositions.filter(pl.col("final_rule")).height
        return (
            f"PatResult(recipe={self.recipe.name!r} {self.recipe.hash[:12]}, "
            f"{self.dispositions.height} reasons, {final} die re-binned, "
            f"{len(self.notes)} notes)"
        )


# --- inputs -----------------------------------------------------------------------------------


@dataclass
class _Inputs:
    die: pl.DataFrame  # every instance of the lots scored
    results: object  # callable(run_id) -> DataFrame, or None
    tests: pl.DataFrame | None
    layouts: pl.DataFrame | None
    limits: pl.DataFrame | None
    runs: pl.LazyFrame | None


def _is_lake(obj) -> bool:
    return hasattr(obj, "scan") and hasattr(obj, "add_run")


def _lazy(frame) -> pl.LazyFrame | None:
    if frame is None:
        return None
    if isinstance(frame, pl.DataFrame):
        return frame.lazy()
    if isinstance(frame, pl.LazyFrame):
        return frame
    raise BackendFabError(f"expected a polars DataFrame or LazyFrame, got {type(frame).__name__}")


def _collect(frame) -> pl.DataFrame | None:
    lf = _lazy(frame)
    return None if lf is None else lf.collect()


def _insertion_runs(runs: pl.LazyFrame | None, insertion: str) -> list[str] | None:
    """run_ids of the recipe's insertion (runs whose insertion starts with it); None = all."""
    if runs is None or not insertion:
        return None
    if "insertion" not in runs.collect_schema().names():
        return None
    return (
        runs.filter(pl.col("insertion").fill_null("").str.starts_with(insertion))
        .select("run_id")
        .collect()["run_id"]
        .to_list()
    )


def _gather(source, lots, product, insertion: str) -> _Inputs:
    def scope(lf: pl.LazyFrame) -> pl.LazyFrame:
        if lots is not None:
            lf = lf.filter(pl.col("lot_id").is_in(list(lots)))
        if product is not None:
            lf = lf.filter(pl.col("product") == product)
        return lf

    if _is_lake(source):
        lake = source
        die_lf = scope(lake.scan("die"))
        wanted = _insertion_runs(lake.scan("runs"), insertion)
        if wanted is not None:
            die_lf = die_lf.filter(pl.col("run_id").is_in(wanted))
        die = die_lf.collect()
        run_ids = sorted(set(die["run_id"].unique().to_list()))
        tests = lake.scan("tests").filter(pl.col("run_id").is_in(run_ids)).collect()
        res_lf = lake.scan("results")

        def results(run_ids: list[str | None]):
            # one scan per run: Delta file statistics on run_id skip the other runs' files
            for code, run_id in enumerate(run_ids):
                if run_id is None:
                    continue
                frame = scope(res_lf.filter(pl.col("run_id") == run_id))
                yield code, frame.select(_RESULT_COLS).collect()

        return _Inputs(
            die=die,
            results=results,
            tests=tests,
            layouts=lake.scan("layouts").collect(),
            limits=lake.scan("limits").filter(pl.col("limit_type") == "SPAT").collect(),
            runs=lake.scan("runs").filter(pl.col("run_id").is_in(run_ids)),
        )
    if not isinstance(source, Mapping):
        raise BackendFabError(
            "run_pat needs a Lake or a mapping of frames {'die': ..., 'results': ..., 'tests': "
            f"..., 'layouts': ..., 'limits': ...}}; got {type(source).__name__}"
        )
    unknown = set(source) - {"die", "results", "tests", "layouts", "limits", "runs"}
    if unknown:
        raise BackendFabError(
            f"run_pat: unknown frame {sorted(unknown)[0]!r}; give die, results, tests, layouts, "
            "limits, runs"
        )
    if source.get("die") is None:
        raise BackendFabError("run_pat: the 'die' frame is required")
    die_lf = scope(_lazy(source["die"]))
    wanted = _insertion_runs(_lazy(source.get("runs")), insertion)
    if wanted is not None:
        die_lf = die_lf.filter(pl.col("run_id").is_in(wanted))
    die = die_lf.collect()
    results_fn = None
    if source.get("results") is not None:
        res = scope(_lazy(source["results"]))

        def results_fn(run_ids: list[str]):
            # one pass over the frame: run ids become codes (no per-run copies)
            yield None, res.select(_RESULT_COLS).collect()

    limits = _collect(source.get("limits"))
    if limits is not None and "limit_type" in limits.columns:
        limits = limits.filter(pl.col("limit_type") == "SPAT")
    return _Inputs(
        die=die,
        results=results_fn,
        tests=_collect(source.get("tests")),
        layouts=_collect(source.get("layouts")),
        limits=limits,
        runs=_lazy(source.get("runs")),
    )


# --- context: final die and their arrays ------------------------------------------------------


@dataclass
class _Context:
    recipe: Recipe
    final: pl.DataFrame  # final die, sorted, with _d (0..D-1)
    good: np.ndarray  # uint8 [D]
    wafer: np.ndarray  # int64 [D]
    wafer_offsets: np.ndarray  # int64 [W + 1], die contiguous per wafer
    wafers: pl.DataFrame  # product, lot_id, wafer_id per wafer index
    lot_of_wafer: np.ndarray  # int64 [W]
    notes: list[str]
    layouts: dict  # product -> Layout


def _ranks(frame: pl.DataFrame) -> pl.DataFrame:
    """Dense integer codes (0-based, in key order) of the wafer and the run of each row.

    Rows come in blocks of one (wafer, run): the blocks are found in one pass comparing
    neighbours, and only the blocks' keys are sorted."""
    keys = [
        pl.col("product").fill_null(""),
        pl.col("lot_id").fill_null(""),
        pl.col("wafer_id").fill_null(""),
        pl.col("run_id"),
    ]
    block = frame.select(pl.struct(keys).rle_id())[:, 0].to_numpy()
    starts = np.flatnonzero(np.r_[True, block[1:] != block[:-1]])
    heads = frame.select(keys).gather(starts).rows()
    wafer_keys = sorted({h[:3] for h in heads})
    run_keys = sorted({h[3] for h in heads})
    w_of = {k: i for i, k in enumerate(wafer_keys)}
    r_of = {k: i for i, k in enumerate(run_keys)}
    lengths = np.diff(np.r_[starts, block.size])
    w = np.repeat(np.array([w_of[h[:3]] for h in heads], dtype=np.int64), lengths)
    r = np.repeat(np.array([r_of[h[3]] for h in heads], dtype=np.int64), lengths)
    return pl.DataFrame({"_w": w, "_r": r})


def _final_die(die: pl.DataFrame, runs: pl.LazyFrame | None) -> pl.DataFrame:
    """The final instance of every die (see backend_fab.bins.resolve_retests), with ``_row``
    (its row in ``die``) and the wafer and run codes ``_w`` and ``_r``."""
    die = die.with_row_index("_row")
    if die.height == 0:
        return die.with_columns(_w=pl.lit(0, pl.Int64), _r=pl.lit(0, pl.Int64))
    codes = _ranks(die)
    w = codes["_w"].to_numpy()
    r = codes["_r"].to_numpy()
    n_w, n_r = int(w.max()) + 1, int(r.max()) + 1
    pairs = int(np.count_nonzero(np.bincount(w * n_r + r, minlength=n_w * n_r)))
    if pairs == n_w:
        # one run per wafer: the reader's `final` flag is the whole story
        return die.with_columns(codes).filter(pl.col("final").fill_null(True))
    resolved = (
        _bins.resolve_retests(die.lazy(), runs=runs)
        .filter(pl.col("is_final"))
        .select(die.columns)
        .collect()
    )
    return resolved.with_columns(_ranks(resolved))


def _layouts(frame: pl.DataFrame | None) -> dict:
    if frame is None or frame.height == 0:
        return {}
    from backend_fab.layout import Layout

    out = {}
    for row in frame.iter_rows(named=True):
        try:
            out[row["product"]] = Layout.from_row(row)
        except (ValueError, KeyError, TypeError):
            continue
    return out


def _context(inp: _Inputs, recipe: Recipe) -> _Context:
    final = _final_die(inp.die, inp.runs)
    if final.height == 0:
        raise BackendFabError(
            "run_pat: no die to score (the die frame is empty for the lots/product asked)"
        )
    # order: wafer (product, lot, wafer id), run, part_seq; integer keys sort fast
    order = np.lexsort(
        (
            final["part_seq"].to_numpy(),
            final["_r"].to_numpy(),
            final["_w"].to_numpy(),
        )
    )
    final = final.select(*_DIE_COLS, "_row", "_w", "_r")
    if not (order.size < 2 or bool(np.all(np.diff(order) > 0))):  # die tables usually are
        final = final.gather(order)
    final = final.with_columns(
        pl.col("product").fill_null(""), pl.col("wafer_id").fill_null("")
    ).with_row_index("_d")
    good = final["hbin"].is_in(recipe.pass_bins).fill_null(False).to_numpy().astype(np.uint8)
    # wafer codes of the scored die, renumbered 0..W-1 (retests may leave a code unused)
    raw = final["_w"].to_numpy()
    starts = np.flatnonzero(np.r_[True, raw[1:] != raw[:-1]])
    wkey = np.repeat(np.arange(starts.size, dtype=np.int64), np.diff(np.r_[starts, raw.size]))
    offsets = np.r_[starts, raw.size].astype(np.int64)
    wafers = final.select("product", "lot_id", "wafer_id").gather(starts)
    lot_of_wafer = (
        wafers.select(pl.struct("product", "lot_id").rank("dense").cast(pl.Int64) - 1)
        .to_series()
        .to_numpy()
    )
    return _Context(
        recipe=recipe,
        final=final.drop("_w"),  # keeps _row (input row) and _r (run code)
        good=good,
        wafer=wkey,
        wafer_offsets=offsets,
        wafers=wafers,
        lot_of_wafer=lot_of_wafer,
        notes=[],
        layouts=_layouts(inp.layouts),
    )


# --- findings ---------------------------------------------------------------------------------


@dataclass
class _Finding:
    rule: str
    die: np.ndarray  # int64 die indices
    test_num: np.ndarray  # int64 (-1: a map rule)
    value: np.ndarray  # float64
    lo: np.ndarray  # float64 (NaN = none)
    hi: np.ndarray
    parameters: str


def _params(rule: str, recipe: Recipe, **extra) -> str:
    p = {**recipe.rule(rule), **extra}
    p.pop("enabled", None)
    return json.dumps(p, sort_keys=True, separators=(",", ":"))


def _finding(rule, recipe, die, test_num=None, value=None, lo=None, hi=None, **extra) -> _Finding:
    die = np.asarray(die, dtype=np.int64)
    n = die.size

    def arr(a, fill):
        return np.full(n, fill, dtype=np.float64) if a is None else np.asarray(a, np.float64)

    return _Finding(
        rule=rule,
        die=die,
        test_num=np.full(n, -1, np.int64) if test_num is None else np.asarray(test_num, np.int64),
        value=arr(value, np.nan),
        lo=arr(lo, np.nan),
        hi=arr(hi, np.nan),
        parameters=_params(rule, recipe, **extra),
    )


# --- parametric values ------------------------------------------------------------------------


@dataclass
class _Values:
    """Parametric values of the final die grouped by (test, wafer): group g = t * W + w."""

    tests: np.ndarray  # int64 [T] test_num per test code
    pins: np.ndarray  # int64 [T] pin (-1 scalar)
    offsets: np.ndarray  # int64 [T * W + 1]
    values: np.ndarray  # float64
    die: np.ndarray  # int64


_RESULT_COLS = ["run_id", "part_seq", "test_num", "pin", "value"]
_KEY_PIN = 131072  # test key = test_num * _KEY_PIN + pin + 1 (pins are U2 in STDF)


def _block_run_ids(r: pl.DataFrame, starts: np.ndarray) -> list:
    """The run id of each block of a results frame (rows ``starts``)."""
    return r["run_id"].gather(starts).to_list()


def _load_values(inp: _Inputs, ctx: _Context) -> _Values | None:
    if inp.results is None:
        ctx.notes.append("no results table: parametric rules (SPAT, DPAT, NNR, IDDQ-delta) skipped")
        return None
    sel = ctx.recipe.data["tests"]
    include = set(sel["include"])
    exclude = set(sel["exclude"])
    final = ctx.final
    # per run: part_seq -> die index, in one flat look-up table
    f_code = final["_r"].to_numpy()
    n_runs = int(f_code.max()) + 1
    seq = final["part_seq"].to_numpy()
    present = np.bincount(f_code, minlength=n_runs) > 0
    lo = np.full(n_runs, np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full(n_runs, -1, dtype=np.int64)
    np.minimum.at(lo, f_code, seq)
    np.maximum.at(hi, f_code, seq)
    lo[~present], hi[~present] = 0, -1
    size = hi - lo + 1
    base = np.r_[0, np.cumsum(size)].astype(np.int64)
    first_row = np.full(n_runs, -1, dtype=np.int64)
    first_row[f_code[::-1]] = np.arange(f_code.size - 1, -1, -1)
    names = final["run_id"].gather(first_row[present]).to_list()
    run_ids = [None] * n_runs
    for c, name in zip(np.flatnonzero(present), names, strict=True):
        run_ids[c] = name
    code_of = {r: i for i, r in enumerate(run_ids) if r is not None}
    lut = np.full(int(base[-1]), -1, dtype=np.int64)
    lut[base[f_code] + seq - lo[f_code]] = final["_d"].to_numpy()
    key = (pl.col("test_num") * _KEY_PIN + (pl.col("pin").fill_null(-1) + 1)).alias("key")
    chunks = []
    seen: list[np.ndarray] = []
    for code, r in inp.results(run_ids):
        if r.height == 0:
            continue
        cols = [pl.col("part_seq"), key, pl.col("value").fill_null(np.nan)]
        if code is None:
            # runs arrive in contiguous blocks: number the blocks (one pass comparing neighbours,
            # cheaper than hashing every 64-character run id), then map each block's run id
            cols += [pl.col("run_id").rle_id().alias("_block"), pl.col("run_id")]
        r = r.select(cols)
        if code is None:
            block = r["_block"].to_numpy()
            starts = np.flatnonzero(np.r_[True, block[1:] != block[:-1]])
            first = _block_run_ids(r, starts)
            block_codes = np.array([code_of.get(v, -1) for v in first], dtype=np.int64)
        else:
            starts = np.zeros(1, dtype=np.int64)
            block_codes = np.array([code], dtype=np.int64)
        seen.append(r["key"].unique().to_numpy())
        chunks.append((np.r_[starts, r.height].astype(np.int64), block_codes, r))
    if not chunks:
        ctx.notes.append("no parametric results for the final die: parametric rules skipped")
        return None
    uniq = np.unique(np.concatenate(seen))
    tnum, pin = uniq // _KEY_PIN, uniq % _KEY_PIN - 1
    keep = np.ones(uniq.size, dtype=bool)
    if sel["pins"] == "scalar":
        keep &= pin < 0
    if include:
        keep &= np.isin(tnum, sorted(include))
    if exclude:
        keep &= ~np.isin(tnum, sorted(exclude))
    uniq = uniq[keep]
    n_t = uniq.size
    n_w = ctx.wafers.height
    gids, dies, vals = [], [], []
    for starts, block_codes, r in chunks:
        value = r["value"].to_numpy()
        gid, die = K.locate(
            starts, block_codes, r["part_seq"].to_numpy(), r["key"].to_numpy(), value,
            lo, size, base, lut, uniq, ctx.wafer, n_w,
        )  # fmt: skip
        gids.append(gid)
        dies.append(die)
        vals.append(value)
    cat = (lambda a: a[0]) if len(chunks) == 1 else np.concatenate
    offsets, g_values, g_die = K.group_values(cat(gids), cat(vals), cat(dies), n_t * n_w)
    if g_values.size == 0:
        ctx.notes.append("no parametric results for the final die: parametric rules skipped")
        return None
    return _Values(
        tests=uniq // _KEY_PIN,
        pins=uniq % _KEY_PIN - 1,
        offsets=offsets,
        values=g_values,
        die=g_die,
    )


def _test_limits(inp: _Inputs, vals: _Values) -> tuple[np.ndarray, np.ndarray]:
    """Tightest known test/spec limits per test code (NaN = none)."""
    lo = np.full(vals.tests.size, np.nan)
    hi = np.full(vals.tests.size, np.nan)
    if inp.tests is None or inp.tests.height == 0:
        return lo, hi
    have = set(inp.tests.columns)
    los = [pl.col(c) for c in ("lo_limit", "lo_spec") if c in have]
    his = [pl.col(c) for c in ("hi_limit", "hi_spec") if c in have]
    if not los and not his:
        return lo, hi
    none = pl.lit(None, dtype=pl.Float64)
    t = (
        inp.tests.group_by("test_num")
        .agg(
            lo=(pl.max_horizontal(*los) if los else none).drop_nans().max(),
            hi=(pl.min_horizontal(*his) if his else none).drop_nans().min(),
        )
        .filter(pl.col("test_num").is_in(vals.tests.tolist()))
    )
    where = {int(tn): i for i, tn in enumerate(vals.tests)}
    for row in t.iter_rows(named=True):
        i = where[int(row["test_num"])]
        lo[i] = np.nan if row["lo"] is None else row["lo"]
        hi[i] = np.nan if row["hi"] is None else row["hi"]
    return lo, hi


def _test_names(inp: _Inputs) -> dict[int, str]:
    if inp.tests is None or inp.tests.height == 0:
        return {}
    t = (
        inp.tests.filter(pl.col("test_name").is_not_null())
        .group_by("test_num")
        .agg(pl.col("test_name").mode().sort().first())
    )
    return {int(a): b for a, b in t.iter_rows()}


# --- SPAT / DPAT ------------------------------------------------------------------------------


def _static_limits(inp: _Inputs, ctx: _Context, vals: _Values, given) -> tuple[np.ndarray, ...]:
    """SPAT limits per (test code, wafer) group: NaN where no static limit exists."""
    from backend_fab.limits import current_limits, test_key

    n_t, n_w = vals.tests.size, ctx.wafers.height
    lo = np.full(n_t * n_w, np.nan)
    hi = np.full(n_t * n_w, np.nan)
    frame = _collect(given) if given is not None else inp.limits
    if frame is None or frame.height == 0:
        return lo, hi, 0
    frame = frame.filter(pl.col("limit_type") == "SPAT")
    frame = current_limits(frame, at=datetime.now(UTC))
    lim = {(r["product"], r["key"]): r for r in frame.iter_rows(named=True)}
    products = ctx.wafers["product"].to_list()
    found = 0
    for t in range(n_t):
        key = test_key(int(vals.tests[t]), int(vals.pins[t]))
        for w in range(n_w):
            row = lim.get((products[w], key))
            if row is None:
                continue
            found += 1
            g = t * n_w + w
            lo[g] = np.nan if row["level1_lo"] is None else row["level1_lo"]
            hi[g] = np.nan if row["level1_hi"] is None else row["level1_hi"]
    return lo, hi, found


def _flag_rows(vals: _Values, flags: np.ndarray, n_w: int):
    idx = np.flatnonzero(flags)
    group = np.searchsorted(vals.offsets, idx, side="right") - 1
    return idx, group, group // n_w


def _spat(ctx: _Context, vals: _Values, s_lo, s_hi) -> tuple[_Finding, np.ndarray]:
    flags = K.flag_outside(vals.values, vals.die, vals.offsets, ctx.good, s_lo, s_hi)
    idx, group, tcode = _flag_rows(vals, flags, ctx.wafers.height)
    spat_die = np.zeros(ctx.good.size, dtype=np.uint8)
    spat_die[vals.die[idx]] = 1
    f = _finding(
        "spat",
        ctx.recipe,
        vals.die[idx],
        vals.tests[tcode],
        vals.values[idx],
        s_lo[group],
        s_hi[group],
        source="limits table (limit_type SPAT)",
    )
    return f, spat_die


def _scope_offsets(ctx: _Context, vals: _Values, scope: str) -> tuple[np.ndarray, np.ndarray]:
    """Offsets of the (test, scope) groups and, per such group, its first (test, wafer) group."""
    n_w = ctx.wafers.height
    n_t = vals.tests.size
    if scope == "wafer":
        first = np.arange(n_t * n_w, dtype=np.int64)
        return vals.offsets, first
    lot = ctx.lot_of_wafer
    starts = np.flatnonzero(np.r_[True, lot[1:] != lot[:-1]])  # first wafer of each lot
    first = (np.arange(n_t)[:, None] * n_w + starts[None, :]).ravel()
    offsets = np.r_[vals.offsets[first], vals.offsets[-1]].astype(np.int64)
    return offsets, first


def _dpat(ctx, inp, vals, s_lo, s_hi, spat_die, limit_rows) -> _Finding:
    p = ctx.recipe.rule("dpat")
    offsets, first = _scope_offsets(ctx, vals, p["scope"])
    n_groups = offsets.size - 1
    n_w = ctx.wafers.height
    pop = ctx.good.copy()
    if p["population"] == "good_not_spat":
        pop &= 1 - spat_die
    if p["method"] == "shape":
        n_pop, center, spread, lo, hi, shapes = _shape_limits(vals, offsets, pop, p)
    else:
        n_pop, center, spread, lo, hi = K.group_limits(
            vals.values, vals.die, offsets, pop, p["method"], p["k"], p["min_samples"]
        )
        shapes = [None] * n_groups
    raw_lo, raw_hi = lo.copy(), hi.copy()
    tcode = first // n_w
    if p["clamp_to_static"]:
        lo = np.fmax(lo, s_lo[first]) if s_lo.size else lo
        hi = np.fmin(hi, s_hi[first]) if s_hi.size else hi
    if p["clamp_to_spec"]:
        t_lo, t_hi = _test_limits(inp, vals)
        lo = np.fmax(lo, t_lo[tcode])
        hi = np.fmin(hi, t_hi[tcode])
    # a group without its own DPAT limit stays unscreened (clamping must not create limits)
    no_limit = np.isnan(raw_lo) & np.isnan(raw_hi)
    lo[no_limit] = np.nan
    hi[no_limit] = np.nan
    flags = K.flag_outside(vals.values, vals.die, offsets, ctx.good, lo, hi)
    idx = np.flatnonzero(flags)
    group = np.searchsorted(offsets, idx, side="right") - 1
    short = int((n_pop < p["min_samples"]).sum())
    if short:
        ctx.notes.append(
            f"dpat: {short} of {n_groups} (test, {p['scope']}) populations have fewer than "
            f"{p['min_samples']} good values and got no DPAT limit"
        )
    wafers = ctx.wafers
    for g in range(n_groups):
        w = int(first[g] % n_w)
        limit_rows.append(
            {
                "rule": "dpat",
                "product": wafers["product"][w],
                "lot_id": wafers["lot_id"][w],
                "wafer_id": wafers["wafer_id"][w] if p["scope"] == "wafer" else None,
                "test_num": int(vals.tests[tcode[g]]),
                "pin": int(vals.pins[tcode[g]]),
                "n": int(n_pop[g]),
                "center": _f(center[g]),
                "spread": _f(spread[g]),
                "lo_limit": _f(lo[g]),
                "hi_limit": _f(hi[g]),
                "method": p["method"],
                "shape": shapes[g],
            }
        )
    return _finding(
        "dpat",
        ctx.recipe,
        vals.die[idx],
        vals.tests[tcode[group]],
        vals.values[idx],
        lo[group],
        hi[group],
    )


def _f(v) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def classify_shape(values) -> str:
    """Shape of a population for the distribution-aware DPAT (one of :data:`SHAPE_FACTORS`).

    Quantile-based so the outliers being hunted do not decide the shape: ``category`` (at most 5
    distinct values), ``double_clamped`` / ``clamped_low`` / ``clamped_high`` (>= 5 % of the
    values sit on the minimum / maximum), ``multimodal`` (a 40-bin histogram between the 1st and
    99th percentiles, smoothed, has two peaks of >= 10 % of the highest with a valley below half
    the lower one between them), ``lognormal`` (positive, Kelly skewness (q90 + q10 - 2 q50) /
    (q90 - q10) > 0.1 that the log at least halves), ``tail_high`` / ``tail_low`` / ``two_tails`` (the 1 % tail
    reaches more than 1.25 x the Gaussian distance (q50 - q01) / (q50 - q25) = 3.45), else
    ``gaussian``; ``unknown`` when the IQR is 0 or there are fewer than 20 values.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 20:
        return "unknown"
    distinct = np.unique(v)
    if distinct.size <= 5:
        return "category"
    q01, q25, q50, q75, q99 = np.quantile(v, [0.01, 0.25, 0.5, 0.75, 0.99])
    if q75 - q25 <= 0:
        return "unknown"
    at_min = float(np.mean(v == distinct[0]))
    at_max = float(np.mean(v == distinct[-1]))
    if at_min >= 0.05 and at_max >= 0.05:
        return "double_clamped"
    if at_min >= 0.05:
        return "clamped_low"
    if at_max >= 0.05:
        return "clamped_high"
    if q99 > q01 and _multimodal(v, q01, q99):
        return "multimodal"
    q10, q90 = np.quantile(v, [0.1, 0.9])
    skew = (q90 + q10 - 2 * q50) / (q90 - q10)  # Kelly's quantile skewness
    if v.min() > 0 and skew > 0.1:
        lq = np.log([q10, q50, q90])
        if abs((lq[2] + lq[0] - 2 * lq[1]) / (lq[2] - lq[0])) < 0.5 * skew:
            return "lognormal"
    gauss = 3.4527  # (z99 - 0) / (z75 - 0) of a normal: 2.3263 / 0.6745
    t_lo = (q50 - q01) / (q50 - q25) / gauss if q50 > q25 else 1.0
    t_hi = (q99 - q50) / (q75 - q50) / gauss if q75 > q50 else 1.0
    heavy_lo, heavy_hi = t_lo > 1.25, t_hi > 1.25
    if heavy_lo and heavy_hi:
        return "two_tails"
    if heavy_hi:
        return "tail_high"
    if heavy_lo:
        return "tail_low"
    return "gaussian"


def _multimodal(v: np.ndarray, a: float, b: float) -> bool:
    hist, _ = np.histogram(v, bins=40, range=(a, b))
    h = np.convolve(hist.astype(np.float64), np.ones(3) / 3, mode="same")
    top = h.max()
    peaks = [
        i
        for i in range(1, h.size - 1)
        if h[i] >= h[i - 1] and h[i] > h[i + 1] and h[i] >= 0.1 * top
    ]
    return any(h[i : j + 1].min() < 0.5 * min(h[i], h[j]) for i, j in itertools.pairwise(peaks))


def _shape_limits(vals: _Values, offsets, pop, p):
    n_groups = offsets.size - 1
    n_pop = np.zeros(n_groups, dtype=np.int64)
    center = np.full(n_groups, np.nan)
    spread = np.full(n_groups, np.nan)
    lo = np.full(n_groups, np.nan)
    hi = np.full(n_groups, np.nan)
    shapes: list[str | None] = [None] * n_groups
    for g in range(n_groups):
        s, e = offsets[g], offsets[g + 1]
        v = vals.values[s:e]
        v = v[(pop[vals.die[s:e]] != 0) & np.isfinite(v)]
        n_pop[g] = v.size
        if v.size < max(p["min_samples"], 2):
            continue
        shape = classify_shape(v)
        f_lo, f_hi = SHAPE_FACTORS[shape][p["severity"]]
        q25, q50, q75 = np.quantile(v, [0.25, 0.5, 0.75])
        sigma = (q75 - q25) / 1.35
        shapes[g] = shape
        center[g], spread[g] = q50, sigma
        if sigma > 0:
            lo[g], hi[g] = q50 - f_lo * sigma, q50 + f_hi * sigma
    return n_pop, center, spread, lo, hi, shapes


# --- IDDQ-delta -------------------------------------------------------------------------------


def _iddq_delta(ctx, inp, vals, limit_rows) -> list[_Finding]:
    p = ctx.recipe.rule("iddq_delta")
    names = _test_names(inp)
    by_name = {name: tn for tn, name in names.items()}
    pairs = []
    for tn, name in sorted(names.items()):
        if p["post_pattern"] in name:
            pre = by_name.get(name.replace(p["post_pattern"], p["pre_pattern"]))
            if pre is not None:
                pairs.append((pre, tn))
    if not pairs:
        ctx.notes.append(
            f"iddq_delta: no test pairs named *{p['pre_pattern']}* / *{p['post_pattern']}*"
        )
        return []
    n_w = ctx.wafers.height
    n_d = ctx.good.size
    code_of = {
        int(t): i for i, (t, pin) in enumerate(zip(vals.tests, vals.pins, strict=True)) if pin < 0
    }
    if p["scope"] == "wafer":
        offsets = ctx.wafer_offsets
        first_wafer = np.arange(n_w)
    else:
        lot = ctx.lot_of_wafer
        starts = np.flatnonzero(np.r_[True, lot[1:] != lot[:-1]])
        offsets = np.r_[ctx.wafer_offsets[starts], ctx.wafer_offsets[-1]].astype(np.int64)
        first_wafer = starts
    out = []
    for pre, post in pairs:
        if pre not in code_of or post not in code_of:
            continue
        dense = []
        for tn in (pre, post):
            t = code_of[tn]
            arr = np.full(n_d, np.nan)
            s, e = vals.offsets[t * n_w], vals.offsets[(t + 1) * n_w]
            arr[vals.die[s:e]] = vals.values[s:e]
            dense.append(arr)
        delta = dense[1] - dense[0]
        die_idx = np.arange(n_d, dtype=np.int64)
        n_pop, center, spread, lo, hi = K.group_limits(
            delta, die_idx, offsets, ctx.good, p["method"], p["k"], p["min_samples"]
        )
        flags = K.flag_outside(delta, die_idx, offsets, ctx.good, lo, hi)
        idx = np.flatnonzero(flags)
        group = np.searchsorted(offsets, idx, side="right") - 1
        for g in range(offsets.size - 1):
            w = int(first_wafer[g])
            limit_rows.append(
                {
                    "rule": "iddq_delta",
                    "product": ctx.wafers["product"][w],
                    "lot_id": ctx.wafers["lot_id"][w],
                    "wafer_id": ctx.wafers["wafer_id"][w] if p["scope"] == "wafer" else None,
                    "test_num": int(post),
                    "pin": -1,
                    "n": int(n_pop[g]),
                    "center": _f(center[g]),
                    "spread": _f(spread[g]),
                    "lo_limit": _f(lo[g]),
                    "hi_limit": _f(hi[g]),
                    "method": p["method"],
                    "shape": None,
                }
            )
        out.append(
            _finding(
                "iddq_delta",
                ctx.recipe,
                idx,
                np.full(idx.size, post),
                delta[idx],
                lo[group],
                hi[group],
                pre_test=int(pre),
                post_test=int(post),
                quantity="post - pre",
            )
        )
    return out


# --- die grids for the map rules --------------------------------------------------------------


@dataclass
class _Grid:
    ix: np.ndarray  # int64 [D] column of each die (-1 when it has no coordinates)
    iy: np.ndarray
    cx: np.ndarray  # canonical x / y of each die (int64)
    cy: np.ndarray
    shape: tuple[int, int, int]  # (n_wafers, ny, nx)
    x0: int
    y0: int

    def state(self, ctx: _Context, bad_bins: Sequence[int]) -> np.ndarray:
        """int8 state grid: -1 no die, 0 good (or not in bad_bins), 1 bad."""
        st = np.full(self.shape, -1, dtype=np.int8)
        ok = self.ix >= 0
        if bad_bins:
            bad = ctx.final["hbin"].is_in(list(bad_bins)).fill_null(False).to_numpy()
        else:
            bad = ctx.good == 0
        st[ctx.wafer[ok], self.iy[ok], self.ix[ok]] = bad[ok].astype(np.int8)
        return st

    def at(self, ctx: _Context, grid: np.ndarray) -> np.ndarray:
        """The value of ``grid`` (n_wafers, ny, nx) at every die (0 where no coordinates)."""
        out = np.zeros(self.ix.size, dtype=grid.dtype)
        ok = self.ix >= 0
        out[ok] = grid[ctx.wafer[ok], self.iy[ok], self.ix[ok]]
        return out


def _grid(ctx: _Context) -> _Grid | None:
    """Every wafer of the run on one common grid, canonical frame (layouts give the axes).

    Built with plain integer arithmetic (``backend_fab.kernels.grids.lot_stack`` does the same
    per lot for frames, with string wafer codes: several times slower on millions of die). Two
    final die on one cell, or a grid too large to be a wafer, raise a KernelInputError."""
    from backend_fab.errors import KernelInputError

    x = ctx.final["x"].to_numpy()
    y = ctx.final["y"].to_numpy()
    has = ~(ctx.final["x"].is_null() | ctx.final["y"].is_null()).to_numpy()
    if not has.any():
        ctx.notes.append(
            "no die coordinates: map rules (GDBN, NNR, cluster, reticle, Z-PAT) skipped"
        )
        return None
    cx = np.zeros(x.size, dtype=np.int64)
    cy = np.zeros(y.size, dtype=np.int64)
    # products per wafer (a handful), not per die: string arrays of millions are slow in numpy
    wafer_product = ctx.wafers["product"].to_list()
    for prod in sorted(set(wafer_product)):
        wafers_of = np.array([p == prod for p in wafer_product])
        sel = wafers_of[ctx.wafer] & has
        lay = ctx.layouts.get(prod)
        xs, ys = x[sel].astype(np.int64), y[sel].astype(np.int64)
        if lay is not None:
            xs, ys = (a.astype(np.int64) for a in lay.to_canonical(xs, ys))
        cx[sel], cy[sel] = xs, ys
    x0, x1 = int(cx[has].min()), int(cx[has].max())
    y0, y1 = int(cy[has].min()), int(cy[has].max())
    nx, ny = x1 - x0 + 1, y1 - y0 + 1
    n_w = ctx.wafers.height
    if nx * ny > 4_000_000:
        raise KernelInputError(
            f"die coordinates span x {x0}..{x1}, y {y0}..{y1} ({nx} x {ny} cells): not one "
            "wafer's grid; a coordinate is probably garbage (STDF -32768 not turned into null)"
        )
    ix = np.where(has, cx - x0, -1)
    iy = np.where(has, cy - y0, -1)
    cell = (ctx.wafer[has] * ny + iy[has]) * nx + ix[has]
    counts = np.bincount(cell, minlength=n_w * ny * nx)
    if counts.max() > 1:
        c = int(np.argmax(counts))
        w, rest = divmod(c, ny * nx)
        row = ctx.wafers.row(w, named=True)
        raise KernelInputError(
            f"die table: lot {row['lot_id']!r} wafer {row['wafer_id']!r} has {int(counts[c])} "
            f"final die at canonical x={rest % nx + x0}, y={rest // nx + y0}; each die needs one "
            "final instance (check the `final` flags of retests)"
        )
    return _Grid(ix, iy, cx, cy, (n_w, ny, nx), x0, y0)


def _bad_bins(ctx: _Context, rule: str) -> list[int]:
    return list(ctx.recipe.data[rule].get("bad_bins") or [])


def _gdbn(ctx: _Context, grid: _Grid) -> _Finding:
    from backend_fab_kernels.gdbn import gdbn

    p = ctx.recipe.rule("gdbn")
    state = grid.state(ctx, _bad_bins(ctx, "gdbn"))
    flags, score = gdbn(
        state,
        p["algorithm"],
        window=p["window"],
        fail_count=p["fail_count"],
        ring_weights=[(p["adjacent_weight"], p["diagonal_weight"])],
        threshold=p["weight_threshold"],
        edge=None if p["edge"] == "auto" else p["edge"],
        edge_scale=p["edge_scale"],
        edge_type=p["edge_type"],
        return_score=True,
    )
    flagged = grid.at(ctx, flags).astype(bool) & (ctx.good == 1)
    idx = np.flatnonzero(flagged)
    thr = p["fail_count"] if p["algorithm"] == "squeeze" else p["weight_threshold"]
    return _finding(
        "gdbn",
        ctx.recipe,
        idx,
        value=grid.at(ctx, score)[idx],
        hi=np.full(idx.size, float(thr)),
        quantity="bad-neighbour count" if p["algorithm"] == "squeeze" else "neighbour weight",
    )


# --- run --------------------------------------------------------------------------------------

_MAP_RULES = ("nnr", "gdbn", "cluster", "reticle", "zpat")


def run_pat(
    source,
    recipe: Recipe | Mapping | str | None = None,
    *,
    lots: Sequence[str] | None = None,
    product: str | None = None,
    static_limits: pl.DataFrame | pl.LazyFrame | None = None,
) -> PatResult:
    """Run a PAT recipe over the final die of ``lots`` (every lot when None).

    Parameters
    ----------
    source : a :class:`backend_fab.lake.Lake`, or a mapping of frames with ``die`` (required),
        ``results``, ``tests``, ``layouts``, ``limits`` (static PAT rows) and ``runs``.
    recipe : anything :func:`backend_fab.pat.load_recipe` takes (None: the default recipe).
    lots, product : restrict the die scored.
    static_limits : SPAT limit rows (``limits`` table) to use instead of the source's.

    Returns a :class:`PatResult`. Raises :class:`RecipeError` for a bad recipe and
    :class:`BackendFabError` for unusable input.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    rec = load_recipe(recipe)
    inp = _gather(source, lots, product, rec.data["recipe"]["insertion"])
    ctx = _context(inp, rec)
    timings["die"] = time.perf_counter() - t0
    findings: list[_Finding] = []
    limit_rows: list[dict] = []
    enabled = set(rec.precedence)
    vals = None
    if enabled & {"spat", "dpat", "nnr", "iddq_delta"}:
        t = time.perf_counter()
        vals = _load_values(inp, ctx)
        timings["values"] = time.perf_counter() - t
    if vals is not None:
        t = time.perf_counter()
        s_lo, s_hi, n_static = _static_limits(inp, ctx, vals, static_limits)
        spat_die = np.zeros(ctx.good.size, dtype=np.uint8)
        if "spat" in enabled:
            if n_static == 0:
                ctx.notes.append(
                    "spat: no static PAT limits (limit_type SPAT) for these products and tests; "
                    "compute them with backend_fab.limits.static_pat_limits and save_limits"
                )
            else:
                f, spat_die = _spat(ctx, vals, s_lo, s_hi)
                findings.append(f)
                _spat_limit_rows(ctx, vals, s_lo, s_hi, limit_rows)
        timings["spat"] = time.perf_counter() - t
        if "dpat" in enabled:
            t = time.perf_counter()
            findings.append(_dpat(ctx, inp, vals, s_lo, s_hi, spat_die, limit_rows))
            timings["dpat"] = time.perf_counter() - t
        if "iddq_delta" in enabled:
            t = time.perf_counter()
            findings.extend(_iddq_delta(ctx, inp, vals, limit_rows))
            timings["iddq_delta"] = time.perf_counter() - t
    if enabled & set(_MAP_RULES):
        t = time.perf_counter()
        grid = _grid(ctx)
        timings["grid"] = time.perf_counter() - t
        if grid is not None:
            from backend_fab.pat import _maps

            for rule in _MAP_RULES:
                if rule not in enabled:
                    continue
                t = time.perf_counter()
                if rule == "gdbn":
                    findings.append(_gdbn(ctx, grid))
                elif rule == "nnr":
                    if vals is not None:
                        findings.extend(_maps.nnr(ctx, grid, vals, limit_rows))
                else:
                    findings.extend(getattr(_maps, rule)(ctx, grid))
                timings[rule] = time.perf_counter() - t
    t = time.perf_counter()
    disp, finals = _dispositions(ctx, findings)
    die_out = _rebin(ctx, inp.die, finals)
    loss = _yield_loss(ctx, disp)
    limits = _limits_frame(limit_rows)
    timings["assemble"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    return PatResult(
        recipe=rec,
        dispositions=disp,
        die=die_out,
        yield_loss=loss,
        limits=limits,
        notes=ctx.notes,
        timings=timings,
    )


def run_pat_frames(
    die: pl.LazyFrame | pl.DataFrame,
    *,
    results=None,
    tests=None,
    layouts=None,
    limits=None,
    runs=None,
    recipe: Recipe | Mapping | str | None = None,
    lots: Sequence[str] | None = None,
    product: str | None = None,
    static_limits=None,
) -> PatResult:
    """:func:`run_pat` with the die table first (the ``fab`` namespace's ``pat``):
    ``die.fab.pat(results=results, layouts=layouts, recipe=...)``."""
    frames = {
        "die": die,
        "results": results,
        "tests": tests,
        "layouts": layouts,
        "limits": limits,
        "runs": runs,
    }
    return run_pat(
        {k: v for k, v in frames.items() if v is not None},
        recipe,
        lots=lots,
        product=product,
        static_limits=static_limits,
    )


def _spat_limit_rows(ctx, vals, s_lo, s_hi, limit_rows) -> None:
    n_w = ctx.wafers.height
    seen = set()
    for g in np.flatnonzero(np.isfinite(s_lo) | np.isfinite(s_hi)):
        t, w = divmod(int(g), n_w)
        key = (ctx.wafers["product"][w], t)
        if key in seen:
            continue
        seen.add(key)
        limit_rows.append(
            {
                "rule": "spat",
                "product": key[0],
                "lot_id": None,
                "wafer_id": None,
                "test_num": int(vals.tests[t]),
                "pin": int(vals.pins[t]),
                "n": None,
                "center": None,
                "spread": None,
                "lo_limit": _f(s_lo[g]),
                "hi_limit": _f(s_hi[g]),
                "method": "static",
                "shape": None,
            }
        )


_LIMIT_SCHEMA = {
    "rule": pl.String,
    "product": pl.String,
    "lot_id": pl.String,
    "wafer_id": pl.String,
    "test_num": pl.Int64,
    "pin": pl.Int64,
    "n": pl.Int64,
    "center": pl.Float64,
    "spread": pl.Float64,
    "lo_limit": pl.Float64,
    "hi_limit": pl.Float64,
    "method": pl.String,
    "shape": pl.String,
}


def _limits_frame(rows: list[dict]) -> pl.DataFrame:
    frame = pl.DataFrame(rows, schema=_LIMIT_SCHEMA, orient="row")
    return frame.sort(["rule", "product", "lot_id", "wafer_id", "test_num", "pin"], nulls_last=True)


# --- assembly ---------------------------------------------------------------------------------


def _dispositions(
    ctx: _Context, findings: list[_Finding]
) -> tuple[pl.DataFrame, tuple[np.ndarray, np.ndarray]]:
    """The dispositions table, and (die index, new bin) of every die's final rule."""
    from backend_fab import schema

    rec = ctx.recipe
    rank = {r: i for i, r in enumerate(rec.precedence)}
    parts = []
    for f in findings:
        if f.die.size == 0:
            continue
        parts.append(
            pl.DataFrame(
                {
                    "_d": f.die,
                    "rule": pl.Series([f.rule] * f.die.size, dtype=pl.String),
                    "test_num": f.test_num,
                    "value": f.value,
                    "lo_limit": f.lo,
                    "hi_limit": f.hi,
                    "parameters": pl.Series([f.parameters] * f.die.size, dtype=pl.String),
                }
            )
        )
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32))
    if not parts:
        return schema.table("dispositions").empty(), empty
    rows = pl.concat(parts)
    rows = rows.with_columns(
        _rank=pl.col("rule").replace_strict(rank, return_dtype=pl.Int32),
        _bit=pl.col("rule").replace_strict(REASON_BITS, return_dtype=pl.Int32),
        new_bin=pl.col("rule").replace_strict(
            {r: rec.data[r]["bin"] for r in RULES}, return_dtype=pl.Int32
        ),
        # how far outside its limits (several pins of one test: keep the farthest)
        _excess=pl.max_horizontal(
            pl.col("lo_limit") - pl.col("value"), pl.col("value") - pl.col("hi_limit")
        ).fill_nan(None),
    )
    rows = rows.sort(
        "_d",
        "_rank",
        "test_num",
        "_excess",
        "value",
        descending=[False, False, False, True, False],
        nulls_last=True,
    ).unique(["_d", "_rank", "test_num"], keep="first", maintain_order=True)
    # rows are in (die, precedence, test) order: the first row of a die is its final rule
    d = rows["_d"].to_numpy()
    first = np.r_[True, d[1:] != d[:-1]]
    bits = rows["_bit"].to_numpy()
    die_bits = np.zeros(ctx.good.size, dtype=np.int32)
    np.bitwise_or.at(die_bits, d, bits)
    rows = rows.with_columns(
        reason_bits=pl.Series(die_bits[d], dtype=pl.Int32), final_rule=pl.Series(first)
    )
    info = ctx.final.select(
        "product",
        "lot_id",
        "wafer_id",
        "x",
        "y",
        "run_id",
        "part_seq",
        pl.col("hbin").alias("original_hbin"),
        pl.col("sbin").alias("original_sbin"),
    ).gather(d)
    rows = pl.concat([rows, info], how="horizontal").with_columns(
        pl.col("value", "lo_limit", "hi_limit").fill_nan(None),
        recipe_hash=pl.lit(rec.hash),
    )
    finals = (d[first], rows["new_bin"].to_numpy()[first])
    out = schema.validate("dispositions", rows.drop("_d", "_rank", "_bit", "_excess"), strict=True)
    return out, finals


def _rebin(ctx: _Context, die: pl.DataFrame, finals: tuple[np.ndarray, np.ndarray]) -> pl.DataFrame:
    """The input die table with the final instances of re-binned die in their PAT bin."""
    d_idx, new_bin = finals
    if d_idx.size == 0:
        return die
    mode = ctx.recipe.data["recipe"]["rebin"]
    rows = ctx.final["_row"].to_numpy()[d_idx]
    cols = []
    passed = die["passed"].to_numpy(allow_copy=True).copy()
    passed[rows] = False
    cols.append(pl.Series("passed", passed, dtype=pl.Boolean))
    for col in ("hbin", "sbin"):
        if mode in (col, "both"):
            arr = die[col].to_numpy(allow_copy=True).copy()
            arr[rows] = new_bin
            cols.append(pl.Series(col, arr).cast(pl.Int32))
    return die.with_columns(cols)


def _yield_loss(ctx: _Context, disp: pl.DataFrame) -> pl.DataFrame:
    rec = ctx.recipe
    n_w = ctx.wafers.height
    per_wafer = ctx.wafers.with_columns(
        n_tested=pl.Series(np.bincount(ctx.wafer, minlength=n_w).astype(np.int64)),
        n_good_before=pl.Series(
            np.bincount(ctx.wafer, weights=ctx.good, minlength=n_w).astype(np.int64)
        ),
    )
    keys = ["product", "lot_id", "wafer_id"]
    flagged = disp.group_by(*keys, "rule").agg(
        n_flagged=pl.struct("run_id", "part_seq").n_unique().cast(pl.Int64),
        n_binned=pl.col("final_rule").sum().cast(pl.Int64),
    )
    total = (
        disp.group_by(keys)
        .agg(
            n_flagged=pl.struct("run_id", "part_seq").n_unique().cast(pl.Int64),
            n_binned=pl.col("final_rule").sum().cast(pl.Int64),
        )
        .with_columns(rule=pl.lit("total"))
    )
    rules = pl.DataFrame({"rule": [*rec.precedence, "total"]})
    grid = per_wafer.join(rules, how="cross")
    counts = pl.concat([flagged, total.select(flagged.columns)])
    wafer_level = grid.join(
        counts, on=[*keys, "rule"], how="left", maintain_order="left"
    ).with_columns(pl.col("n_flagged", "n_binned").fill_null(0))
    lot_level = (
        wafer_level.group_by("product", "lot_id", "rule")
        .agg(pl.col("n_tested", "n_good_before", "n_flagged", "n_binned").sum())
        .with_columns(wafer_id=pl.lit(""))
    )
    out = pl.concat([wafer_level, lot_level.select(wafer_level.columns)])
    bins = {r: rec.data[r]["bin"] for r in rec.precedence}
    out = out.with_columns(
        bin=pl.col("rule").replace_strict(bins, default=None, return_dtype=pl.Int32),
        loss=pl.col("n_binned") / pl.col("n_tested"),
        yield_before=pl.col("n_good_before") / pl.col("n_tested"),
        _total=pl.col("n_binned").filter(pl.col("rule") == "total").first().over(keys),
    ).with_columns(
        yield_after=(pl.col("n_good_before") - pl.col("_total")) / pl.col("n_tested"),
        _rank=pl.col("rule").replace_strict(
            {r: i for i, r in enumerate([*rec.precedence, "total"])}, return_dtype=pl.Int32
        ),
    )
    out = out.sort("product", "lot_id", "wafer_id", "_rank")
    return out.select(
        *keys,
        "rule",
        "bin",
        "n_tested",
        "n_good_before",
        "n_flagged",
        "n_binned",
        "loss",
        "yield_before",
        "yield_after",
    )
