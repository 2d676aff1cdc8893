"""Wafer sort (probe) of one fab lot: multi-site touchdowns, fail signatures, parametric data,
planted outliers, retests, latent reliability risk; canonical tables and ground truth.

Everything for a lot is computed on ``(wafers, die, tests)`` arrays in probe order; the only
Python loops run over the lot's wafers (at most 25: each wafer's signature, its outlier truth).
The random draws are numpy's, in a fixed order; three numba kernels
(:mod:`backend_fab_kernels.synth_kernels`) add the systematic terms to the noise, evaluate the
limits and lay out the ``results`` rows, each bit for bit what the equivalent numpy expressions
give. Big arrays come from the generator's :class:`~backend_fab.synth._frames.BufferPool`, string
columns are built as Arrow string views over numpy buffers (no per-row Python or polars string
work): the same seed gives the same bytes.

Model (units of a test: its within-wafer noise ``sigma``; see :mod:`backend_fab.synth.catalog`):

* ``z = lot_shift + wafer_shift + gradient(u, v) + site_offset + noise``; value =
  ``nominal + sigma·z`` (``exp`` of that for leakage tests). ``expected`` = the same without noise.
* Fails, in the tester's flow order: contact (base rate + the lot's bad site; the continuity test
  reads open or short and the die stops there), real defects from the wafer's signature and the
  lot's reticle repeat (each failing die gets a defect mode: IDDQ or input leakage far above the
  limit, scan or MBIST fail, or one DC/AC test far outside its limits), and natural parametric
  fails (gradients and tails beyond tight limits). The first failing test sets the soft bin.
* Outliers: a fraction of the die that pass gets one ``pat`` test moved to ``expected ± s·sigma``,
  ``s`` uniform in [6, 10], kept inside the limits (so the die still passes).
* Retest: contact fails are retested with probability 0.95 and recover unless the contact fails
  again (0.08, plus the bad site's extra probability at that site); other fails are retested with
  probability ``retest_other`` and recover only by re-measurement (repeatability noise 0.3 sigma) or,
  for a real defect, with probability 0.03. Retest rows follow the wafer's first pass, with
  ``retest_index`` 1, ``part_flags`` bit 1 (supersedes the same X/Y) and ``final`` set.
* Latent reliability: a final-good die fails later with probability ``1 - exp(-(latent_base +
  latent_per_neighbor·n + latent_outlier·outlier))``, ``n`` = 8-neighbours failing after retest
  for a real reason (Riordan et al., IRPS 1999; Barnett, Singh & Nelson, IEEE T-Rel 2003). A latent
  die's IDDQ is raised by 2-4 sigma of ln IDDQ (kept inside the limit).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import polars as pl
from backend_fab_kernels.synth_kernels import (
    evaluate_parts,
    result_row_count,
    result_rows,
    standard_normal_grid,
    wafer_values,
)

from backend_fab.layout import Layout
from backend_fab.synth import catalog
from backend_fab.synth._frames import (
    BufferPool,
    build,
    from_rows,
    join_tables,
    labels,
    string_table,
    string_views,
    table_views,
    take_rows,
    view_words,
)
from backend_fab.synth.catalog import DEFECT_MODE_WEIGHTS, TEST_CATALOG, TestDef
from backend_fab.synth.patterns import (
    PATTERN_CLASSES,
    bad_site,
    draw_signature_on,
    estimate_pitch,
    reticle_repeat,
    wafer_geometry,
)
from backend_fab.synth.scenarios import ProductConfig

# defect mode codes
M_NONE, M_OPEN, M_SHORT, M_IDDQ, M_ILEAK, M_SCAN, M_MBIST, M_DC = range(8)
MODE_NAMES = (None, "open", "short", "iddq", "ileak", "scan", "mbist", "dc")
CAUSES = ("pass", "pattern", "random", "reticle", "contact", "parametric")

_SITE_BLOCKS = {1: (1, 1), 2: (2, 1), 4: (2, 2), 8: (4, 2), 16: (4, 4)}

#: index of the fixed tests in every program (flow order)
T_CONT, T_IDDQ, T_ILEAK, T_SCAN, T_MBIST = range(5)
_FUNC_TESTS = np.array([T_SCAN, T_MBIST], dtype=np.int64)

WS_INSERTION = "WS1"
MAX_WAFERS = 25


def lot_id_of(p: ProductConfig, lot_index: int) -> str:
    """Fab lot id of the ``lot_index``-th lot (0-based) of a product: ``<code>L0001`` ..."""
    return f"{p.code}L{lot_index + 1:04d}"


def wafer_names(p: ProductConfig) -> tuple[pl.Series, pl.Series]:
    """(lot_id, wafer_id) of every wafer key ``lot_index * 25 + slot - 1`` of a product."""
    keys = np.arange(p.lots * MAX_WAFERS)
    lots = pl.Series([lot_id_of(p, k) for k in range(p.lots)], dtype=pl.String)
    wafers = pl.Series([f"{s:02d}" for s in range(1, MAX_WAFERS + 1)], dtype=pl.String)
    return lots.gather(keys // MAX_WAFERS), wafers.gather(keys % MAX_WAFERS)


def product_layout(p: ProductConfig) -> Layout:
    """The :class:`Layout` of a scenario product."""
    return Layout(
        product=p.name,
        wafer_size_mm=p.wafer_size_mm,
        die_width_mm=p.die_width_mm,
        die_height_mm=p.die_height_mm,
        edge_exclusion_mm=p.edge_exclusion_mm,
        notch=p.notch,
        pos_x=p.pos_x,
        pos_y=p.pos_y,
        reticle_cols=p.reticle_cols,
        reticle_rows=p.reticle_rows,
        reticle_offset_x=p.reticle_offset_x,
        reticle_offset_y=p.reticle_offset_y,
        pass_hbins=(1,),
        center_x=p.center_x,
        center_y=p.center_y,
    )


def program_tests(p: ProductConfig) -> tuple[TestDef, ...]:
    """The product's test program in flow order: continuity, IDDQ, input leakage, scan, MBIST,
    then the first ``n_tests - 3`` DC/AC tests of the catalogue."""
    fixed = TEST_CATALOG[: catalog.FIXED_TESTS]
    param = [t for t in TEST_CATALOG[catalog.FIXED_TESTS :] if t.family in ("DC", "AC")]
    return fixed + tuple(param[: p.n_tests - 3])


@dataclass
class ProductPlan:
    """Per-product constants the lot generators share (arrays in probe order)."""

    index: int
    config: ProductConfig
    layout: Layout
    n: int
    x: np.ndarray  # data coordinates
    y: np.ndarray
    u: np.ndarray
    v: np.ndarray
    rho2: np.ndarray
    ring: np.ndarray
    site: np.ndarray
    n_touchdowns: int
    nb: np.ndarray  # (n, 8) probe-order neighbour index, n = none
    tests: tuple[TestDef, ...]
    test_num: np.ndarray
    nominal: np.ndarray
    sigma: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    k_min: np.ndarray
    radial: np.ndarray
    linear: np.ndarray
    leak_idx: np.ndarray
    func_idx: np.ndarray
    param_idx: np.ndarray
    pat_idx: np.ndarray
    dcac_idx: np.ndarray
    sbin_of_test: np.ndarray
    hbin_of_sbin: dict[int, int]
    sbins: tuple
    site_offset: np.ndarray  # (n_sites, T) in sigmas
    ft_idx: np.ndarray  # tests carried to final test (IDDQ + up to 4 pat tests)
    die_pitch: float  # die pitch in normalised wafer units (patterns.estimate_pitch)
    geometry: tuple  # (rho, theta, rho_max) of the die (patterns.wafer_geometry)
    is_func: np.ndarray  # (T,) bool: functional tests (no value)
    site_mean: np.ndarray  # (n, T) site offset of each die, in sigmas
    kind_words: np.ndarray  # (T, 4) uint32 Arrow string-view words of each test's kind
    ecid_suffix: tuple  # string table of ":<x>:<y>" of each die (data coordinates)
    extra: dict = field(default_factory=dict)


def make_plan(p: ProductConfig, index: int, seed: int) -> ProductPlan:
    layout = product_layout(p)
    gx, gy = layout.gross_die()
    x0, _, _, y1 = layout.bounds
    sx, sy = _SITE_BLOCKS[p.n_sites]
    col = gx.astype(np.int64) - x0
    row = y1 - gy.astype(np.int64)  # probing starts at the top row
    bx, by = col // sx, row // sy
    site = (col % sx + sx * (row % sy)).astype(np.int16)
    serp = np.where(by % 2 == 0, bx, -bx)
    order = np.lexsort((site, serp, by))
    td_key = (by * 100003 + bx)[order]
    n_td = int(np.count_nonzero(np.diff(td_key)) + 1)
    n = int(gx.size)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    # neighbour index in probe order; padded grid so off-wafer positions read "none" (= n)
    x0_, x1_, y0_, y1_ = layout.bounds
    grid = np.full((y1_ - y0_ + 3, x1_ - x0_ + 3), n, dtype=np.int64)
    gi = gy.astype(np.int64) - y0_ + 1
    gj = gx.astype(np.int64) - x0_ + 1
    grid[gi, gj] = rank
    offsets = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    nb_gross = np.stack([grid[gi + a, gj + b] for a, b in offsets], axis=1)
    nb = nb_gross[order]
    cx, cy = gx[order], gy[order]
    dx, dy = layout.from_canonical(cx, cy)
    u, v = layout.normalized(cx, cy)

    tests = program_tests(p)
    T = len(tests)
    lo = np.array([-np.inf if t.lo_limit is None else t.lo_limit for t in tests])
    hi = np.array([np.inf if t.hi_limit is None else t.hi_limit for t in tests])
    sbins = catalog.ws_sbins(tests)
    rng = np.random.default_rng([seed, index, 0])
    site_offset = rng.normal(0.0, p.site_offset_sigma, (p.n_sites, T))
    func = np.array([t.family == "FUNC" for t in tests])
    site_offset[:, func] = 0.0
    pat_idx = np.array([i for i, t in enumerate(tests) if t.pat], dtype=np.int64)
    site_sorted = site[order]
    return ProductPlan(
        index=index,
        config=p,
        layout=layout,
        n=n,
        x=np.ascontiguousarray(dx, dtype=np.int32),
        y=np.ascontiguousarray(dy, dtype=np.int32),
        u=u,
        v=v,
        rho2=u * u + v * v,
        ring=layout.ring_index(cx, cy).astype(np.int16),
        site=site_sorted,
        n_touchdowns=n_td,
        nb=nb,
        tests=tests,
        test_num=np.array([t.test_num for t in tests], dtype=np.int64),
        nominal=np.array([t.nominal for t in tests]),
        sigma=np.array([t.sigma for t in tests]),
        lo=lo,
        hi=hi,
        k_min=np.array([min(t.k_lo, t.k_hi) if t.family != "LEAK" else t.k_hi for t in tests]),
        radial=np.array([t.radial for t in tests]),
        linear=np.array([t.linear for t in tests]),
        leak_idx=np.array([i for i, t in enumerate(tests) if t.family == "LEAK"], dtype=np.int64),
        func_idx=np.flatnonzero(func),
        param_idx=np.flatnonzero(~func),
        pat_idx=pat_idx,
        dcac_idx=np.array(
            [i for i, t in enumerate(tests) if t.family in ("DC", "AC")], dtype=np.int64
        ),
        sbin_of_test=np.array([t.ws_sbin for t in tests], dtype=np.int32),
        hbin_of_sbin={b.bin: b.hbin for b in sbins},
        sbins=sbins,
        site_offset=site_offset,
        ft_idx=np.concatenate([[T_IDDQ], pat_idx[:4]]).astype(np.int64),
        die_pitch=estimate_pitch(u, v) if n else 0.05,
        geometry=wafer_geometry(u, v),
        is_func=func,
        site_mean=site_offset[site_sorted],
        kind_words=view_words([t.kind for t in tests]).view(np.uint32).reshape(T, 4),
        ecid_suffix=string_table(
            f":{a}:{b}" for a, b in zip(dx.tolist(), dy.tolist(), strict=True)
        ),
    )


@dataclass
class GoodDie:
    """Final-good die in wafer and probe order: what goes to assembly (one lot or a batch).

    ``key`` identifies the source wafer: ``lot_index * 25 + slot - 1`` (see :func:`wafer_key`).
    """

    key: np.ndarray  # int32
    x: np.ndarray
    y: np.ndarray
    ring: np.ndarray
    latent: np.ndarray
    latent_ft1: np.ndarray  # latent fail shows at FT1 (else at PBI)
    z_ft: np.ndarray  # (n, len(plan.ft_idx)) final WS z of the tests carried to final test
    k: np.ndarray  # probe index of the die on its wafer (plan arrays)
    ready: datetime  # when the lot leaves wafer sort

    @property
    def size(self) -> int:
        return int(self.x.size)

    _ARRAYS = ("key", "x", "y", "ring", "latent", "latent_ft1", "z_ft", "k")

    def take(self, sl: slice) -> GoodDie:
        """The die of a slice (same ready time)."""
        return GoodDie(**{k: getattr(self, k)[sl] for k in self._ARRAYS}, ready=self.ready)

    @classmethod
    def concat(cls, parts: list[GoodDie]) -> GoodDie:
        """Die of several chunks, in order; ready when the last chunk is."""
        return cls(
            **{k: np.concatenate([getattr(p, k) for p in parts]) for k in cls._ARRAYS},
            ready=max(p.ready for p in parts),
        )


@dataclass
class LotResult:
    tables: dict[str, pl.DataFrame]
    good: GoodDie
    finish: datetime
    n_die_rows: int


def _to_values(plan: ProductPlan, z: np.ndarray, pool: BufferPool) -> np.ndarray:
    """Measured values (die x tests) of z-scores (die x tests)."""
    v = np.multiply(z, plan.sigma, out=pool.empty(z.shape, np.float64))
    v += plan.nominal
    return _log_and_functional(plan, v)


def _log_and_functional(plan: ProductPlan, v: np.ndarray) -> np.ndarray:
    """``nominal + sigma * z`` -> values, in place: leakage tests are log-normal, functional
    tests have no value (NaN)."""
    for t in plan.leak_idx.tolist():  # in place on the strided column
        np.exp(v[..., t], out=v[..., t])
    for t in plan.func_idx.tolist():
        v[..., t] = np.nan
    return v


def _impose(plan: ProductPlan, v: np.ndarray, mode: np.ndarray, dc_test: np.ndarray, rng):
    """Write each die's failure mode into its values (2-D ``v``: die x tests); return the
    functional fail flags (die x 2: scan, mbist)."""
    m_open = np.flatnonzero(mode == M_OPEN)
    v[m_open, T_CONT] = rng.uniform(-1.9, -1.5, m_open.size)
    m_short = np.flatnonzero(mode == M_SHORT)
    v[m_short, T_CONT] = rng.uniform(-0.06, 0.0, m_short.size)
    for code, t in ((M_IDDQ, T_IDDQ), (M_ILEAK, T_ILEAK)):
        idx = np.flatnonzero(mode == code)
        v[idx, t] = plan.hi[t] * np.exp(rng.uniform(0.3, 3.0, idx.size))
    idx = np.flatnonzero(mode == M_DC)
    if idx.size:
        t = dc_test[idx]
        sign = np.where(rng.random(idx.size) < 0.5, -1.0, 1.0)
        v[idx, t] = plan.nominal[t] + sign * rng.uniform(20.0, 60.0, idx.size) * plan.sigma[t]
    func_fail = np.zeros((mode.size, 2), dtype=bool)
    func_fail[:, 0] = mode == M_SCAN
    func_fail[:, 1] = mode == M_MBIST
    return func_fail


def _evaluate(
    plan: ProductPlan, v: np.ndarray, func_fail: np.ndarray, mode: np.ndarray, pool: BufferPool
):
    """Fails of the executed tests, tests executed, pass, bins. ``v``: die x tests.

    A part executes every test (the program continues on fail) or, when continuity fails, only
    the continuity test: the executed tests are the first ``n_exec`` of the flow, and ``fail``
    is False beyond them. A die with an open or short never gets past continuity.
    """
    fail, n_exec, first = evaluate_parts(
        v,
        plan.lo,
        plan.hi,
        _FUNC_TESTS,
        func_fail,
        (mode == M_OPEN) | (mode == M_SHORT),
        out=pool.empty(v.shape, bool),
    )
    any_fail = first >= 0
    first = np.maximum(first, 0)
    sbin = np.where(any_fail, plan.sbin_of_test[first], 1).astype(np.int32)
    is_cont = any_fail & (first == T_CONT)
    sbin[is_cont] = np.where(v[is_cont, T_CONT] > plan.hi[T_CONT], 11, 10)
    lut = np.zeros(int(max(plan.hbin_of_sbin)) + 1, dtype=np.int32)
    for s, h in plan.hbin_of_sbin.items():
        lut[s] = h
    hbin = lut[sbin]
    return fail, n_exec, ~any_fail, sbin, hbin


def _test_time_ms(plan: ProductPlan, n_exec: np.ndarray, rng) -> np.ndarray:
    """Test time of each part from the parametric and functional tests it executed (a prefix of
    the flow of ``n_exec`` tests)."""
    is_param = np.ones(len(plan.tests), dtype=np.int64)
    is_param[plan.func_idx] = 0
    n_p = np.concatenate([[0], np.cumsum(is_param)])[n_exec]  # parametric tests in the prefix
    n_f = n_exec - n_p
    t = 4.0 + 5.5 * n_p + 32.0 * n_f + rng.normal(0.0, 1.5, n_exec.shape[0])
    return np.round(np.maximum(t, 2.0), 3)


def results_frame(
    pool: BufferPool,
    *,
    run_id: str,
    product: str,
    lot_id: str,
    first: tuple,
    retest: tuple,
    order: np.ndarray,
    test_num: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    kind_words: np.ndarray,
) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """The ``results`` table of an insertion run, with each test's execution and fail counts.

    ``first``/``retest``: ``(values, fail, n_exec)`` of the first-pass and retest parts (parts x
    tests; a part executed its first ``n_exec`` tests); ``order``: the source part of each output
    part (first-pass parts, then retest parts numbered after them), see
    :func:`backend_fab_kernels.synth_kernels.result_rows`.
    """
    n = result_row_count(first[2], retest[2], order)
    out = (
        pool.empty(n, np.int64),
        pool.empty(n, np.int64),
        pool.empty((n, 4), np.uint32),
        pool.empty(n, np.float64),
        pool.empty(n, np.int16),
        pool.empty(n, np.int16),
        pool.empty(n, np.bool_),
    )
    seq, num, words, value, test_flags, parm_flags, passed, exec_count, fail_count = result_rows(
        *first, *retest, order, test_num, lo, hi, kind_words, out=out
    )
    frame = build(
        "results",
        n,
        {
            "run_id": run_id,
            "part_seq": seq,
            "test_num": num,
            "pin": -1,
            "kind": string_views("kind", words),
            "product": product,
            "lot_id": lot_id,
            "value": pl.Series("value", value, nan_to_null=True),
            "test_flags": test_flags,
            "parm_flags": parm_flags,
            "passed": passed,
        },
    )
    return frame, exec_count, fail_count


def ecid_column(
    plan: ProductPlan, heads: tuple, head: np.ndarray, die: np.ndarray, valid=None
) -> pl.Series:
    """ECIDs ``<lot_id>:<wafer_id>:<x>:<y>`` (see :mod:`backend_fab.synth.assembly`): row ``i``
    is die ``die[i]`` (probe index) of the wafer whose ``"<lot_id>:<wafer_id>"`` is row
    ``head[i]`` of the string table ``heads``; null where ``valid`` is False."""
    suffix, suffix_len = plan.ecid_suffix
    table, lengths = join_tables(
        (take_rows(heads[0], head), heads[1][head]), (take_rows(suffix, die), suffix_len[die])
    )
    return table_views("ecid", table, lengths, np.arange(head.size), valid)


def lot_ecids(plan: ProductPlan, lot_id: str, wafer_ids: list[str], die: np.ndarray) -> pl.Series:
    """ECIDs of the rows of a wafer-sort lot, ``die``: lot die index ``wafer * n + k`` of each row
    (retest rows share their die's bytes)."""
    head, head_len = string_table(f"{lot_id}:{w}" for w in wafer_ids)
    suffix, suffix_len = plan.ecid_suffix
    if np.any(head_len != head.shape[1]):  # heads of unequal length: row by row
        return ecid_column(plan, (head, head_len), die // plan.n, die % plan.n)
    # every die of every wafer once: head and suffix blocks (rows are zero padded)
    table = np.zeros((len(wafer_ids), plan.n, head.shape[1] + suffix.shape[1]), dtype=np.uint8)
    table[:, :, : head.shape[1]] = head[:, None, :]
    table[:, :, head.shape[1] :] = suffix[None, :, :]
    lengths = (head_len[:, None] + suffix_len[None, :]).reshape(-1)
    return table_views("ecid", table.reshape(len(wafer_ids) * plan.n, -1), lengths, die)


def part_ids(plan: ProductPlan, n: int) -> pl.Series:
    """``"1"`` .. ``str(n)``: the PART_IDs of a run's parts (a slice of a cached column)."""
    cached = plan.extra.get("part_ids")
    if cached is None or cached.len() < n:
        cap = max(n, 2 * MAX_WAFERS * plan.n)
        cached = plan.extra["part_ids"] = pl.Series(np.arange(1, cap + 1)).cast(pl.String)
    return cached.slice(0, n)


def _mode_cdf(kinds: list[str]) -> np.ndarray:
    w = np.array([DEFECT_MODE_WEIGHTS[k] for k in kinds], dtype=np.float64)
    return np.cumsum(w / w.sum(axis=1, keepdims=True), axis=1)


def sort_lot(
    plan: ProductPlan,
    *,
    lot_id: str,
    run_id: str,
    seed: int,
    lot_index: int,
    start: datetime,
    sublot_id: str | None = None,
    pool: BufferPool | None = None,
) -> LotResult:
    """Generate the WS1 run of one fab lot: canonical tables plus ground truth.

    ``pool``: where the big arrays come from (a generator passes one pool to all its runs).
    """
    pool = BufferPool() if pool is None else pool
    p = plan.config
    rng = np.random.default_rng([seed, plan.index, lot_index, 1])
    N, T = plan.n, len(plan.tests)

    # --- wafers of the lot -------------------------------------------------------------------
    slots = np.arange(1, p.wafers_per_lot + 1)
    if p.wafers_per_lot > 1 and rng.random() < p.short_lot_rate:
        k = int(rng.integers(1, min(3, p.wafers_per_lot - 1) + 1))
        slots = np.sort(rng.choice(slots, size=p.wafers_per_lot - k, replace=False))
    W = int(slots.size)
    wafer_ids = [f"{s:02d}" for s in slots]

    # --- lot-level plants --------------------------------------------------------------------
    has_bad_site = (rng.random() < p.bad_site_lot_rate) or (lot_index + 1) in p.bad_site_lots
    site_p, site_used = bad_site(plan.site, rng, n_sites=p.n_sites)
    if not has_bad_site or p.n_sites < 2:
        site_p = np.zeros(N)
        site_used = None
    has_reticle = (rng.random() < p.reticle_lot_rate) or (lot_index + 1) in p.reticle_lots
    has_reticle = has_reticle and p.reticle_cols * p.reticle_rows > 1
    rx, ry = plan.layout.reticle_xy(*plan.layout.to_canonical(plan.x, plan.y))
    ret_p, ret_used = reticle_repeat(
        rx, ry, rng, reticle_cols=p.reticle_cols, reticle_rows=p.reticle_rows
    )
    if not has_reticle:
        ret_p[:] = 0.0
        ret_used = None
    lot_shift = rng.normal(0.0, p.lot_shift_sigma, T)
    lot_shift[plan.func_idx] = 0.0
    lot_shift[T_CONT] *= 0.2

    # --- per-wafer signatures ----------------------------------------------------------------
    mix_names = [c for c in PATTERN_CLASSES if p.pattern_mix.get(c, 0.0) > 0]
    mix_w = np.array([p.pattern_mix[c] for c in mix_names])
    kinds = list(rng.choice(np.array(mix_names, dtype=object), size=W, p=mix_w / mix_w.sum()))
    if p.pattern_cycle:
        first = lot_index * p.wafers_per_lot  # wafer count before this lot (full lots)
        kinds = [p.pattern_cycle[(first + w) % len(p.pattern_cycle)] for w in range(W)]
    p_sig = np.empty((W, N))
    p_bg = np.empty(W)
    p_ret = np.zeros((W, N))
    wafer_params, wafer_reticle = [], []
    for w in range(W):
        wrng = np.random.default_rng([seed, plan.index, lot_index, 2, w])
        p_total, used = draw_signature_on(
            kinds[w], plan.u, plan.v, plan.geometry, wrng, die_pitch=plan.die_pitch
        )
        # split p = 1 - (1 - bg)(1 - sig) into its two independent causes
        p_bg[w] = bg = used["background"]
        p_sig[w] = (p_total - bg) / (1.0 - bg) if bg < 1.0 else 0.0
        wafer_params.append(used)
        if ret_used is not None:
            scale = float(wrng.uniform(0.6, 1.0))
            p_ret[w] = ret_p * scale
            wafer_reticle.append({**ret_used, "density": ret_used["density"] * scale})
        else:
            wafer_reticle.append(None)

    # --- parametric values (sigma units) -----------------------------------------------------
    wafer_shift = rng.normal(0.0, p.wafer_shift_sigma, (W, T))
    wafer_shift[:, plan.func_idx] = 0.0
    g_rad = rng.normal(1.0, 0.25, (W, T))
    phi = rng.uniform(0.0, 2.0 * np.pi, W)
    g_lin = rng.normal(1.0, 0.25, (W, T))
    radial_term = 2.0 * (plan.rho2 - 0.5)  # (N,) in [-1, ~0.9]
    tilt = np.cos(phi)[:, None] * plan.u[None, :] + np.sin(phi)[:, None] * plan.v[None, :]
    rad_wt = plan.radial * g_rad  # (W, T)
    lin_wt = plan.linear * g_lin
    shift_wt = lot_shift + wafer_shift
    # sigmas: float32 is plenty; one counter-based stream per wafer (several times cheaper
    # than numpy's normals, and the same whichever thread draws it)
    keys = rng.integers(0, 2**63, W, dtype=np.uint64)
    z = standard_normal_grid(keys, N * T, out=pool.empty((W, N * T), np.float32))
    z = z.reshape(W, N, T)
    z, v1 = wafer_values(
        z,
        shift_wt,
        plan.site_mean,
        radial_term,
        rad_wt,
        tilt,
        lin_wt,
        plan.is_func,
        plan.sigma,
        plan.nominal,
        out=(z, pool.empty((W * N, T), np.float64)),
    )

    def expected_z(die: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Noise-free mean (sigmas) of lot die index ``die`` on test ``t``."""
        w, k = die // N, die % N
        return (
            shift_wt[w, t]
            + plan.site_offset[plan.site[k], t]
            + radial_term[k] * rad_wt[w, t]
            + tilt[w, k] * lin_wt[w, t]
        )

    # --- fail modes ----------------------------------------------------------------------------
    r_contact = rng.random((W, N))
    contact = r_contact < (p.contact_rate + site_p)[None, :]
    sig_fail = rng.random((W, N)) < p_sig
    bg_fail = rng.random((W, N)) < p_bg[:, None]
    ret_fail = rng.random((W, N)) < p_ret
    defect = sig_fail | bg_fail | ret_fail
    from_reticle = ret_fail & ~sig_fail & ~bg_fail
    from_background = bg_fail & ~sig_fail
    cdf_w = _mode_cdf(kinds)  # (W, 5)
    cdf_ret = _mode_cdf(["reticle"])[0]
    r_mode = rng.random((W, N))
    # mode index = number of cumulative weights below the uniform draw
    mode_sig = np.stack([np.searchsorted(cdf_w[w], r_mode[w], side="left") for w in range(W)])
    mode_ret = np.searchsorted(cdf_ret, r_mode, side="left")
    defect_mode = np.where(from_reticle, mode_ret, mode_sig).clip(0, 4) + M_IDDQ
    if plan.dcac_idx.size == 0:
        defect_mode[defect_mode == M_DC] = M_SCAN
    mode = np.where(defect, defect_mode, M_NONE)
    open_short = np.where(rng.random((W, N)) < 0.7, M_OPEN, M_SHORT)
    mode = np.where(contact, open_short, mode).astype(np.int8)
    dc_test = (
        plan.dcac_idx[rng.integers(0, plan.dcac_idx.size, (W, N))]
        if plan.dcac_idx.size
        else np.zeros((W, N), dtype=np.int64)
    )

    M = W * N
    z2 = z.reshape(M, T)
    mode1 = mode.reshape(M)
    dc1 = dc_test.reshape(M)
    _log_and_functional(plan, v1)
    ff1 = _impose(plan, v1, mode1, dc1, rng)
    fail1, nexec1, pass1, sbin1, hbin1 = _evaluate(plan, v1, ff1, mode1, pool)

    # --- planted outliers on passing die -----------------------------------------------------
    outlier = np.zeros(M, dtype=bool)
    out_rows = []
    if plan.pat_idx.size and p.outlier_rate > 0:
        cand = np.flatnonzero(pass1 & (mode1 == M_NONE) & (rng.random(M) < p.outlier_rate))
        t_pick = plan.pat_idx[rng.integers(0, plan.pat_idx.size, cand.size)]
        s = rng.uniform(6.0, 10.0, cand.size) * np.where(rng.random(cand.size) < 0.5, -1.0, 1.0)
        m = expected_z(cand, t_pick)
        ok = np.abs(m + s) < plan.k_min[t_pick] - 0.5
        cand, t_pick, s, m = cand[ok], t_pick[ok], s[ok], m[ok]
        z2[cand, t_pick] = m + s
        v1[cand, t_pick] = plan.nominal[t_pick] + plan.sigma[t_pick] * (m + s)
        outlier[cand] = True
        out_rows = (cand, t_pick, s, m)

    # --- retests -------------------------------------------------------------------------------
    is_contact1 = (mode1 == M_OPEN) | (mode1 == M_SHORT)
    r_ret = rng.random(M)
    retested = ~pass1 & (r_ret < np.where(is_contact1, 0.95, p.retest_other))
    ridx = np.flatnonzero(retested)  # ordered by wafer, then probe order
    R = ridx.size
    mode_r = mode1[ridx].copy()
    c_r = is_contact1[ridx]
    again = rng.random(R) < 0.08 + site_p[ridx % N]
    mode_r[c_r & ~again] = M_NONE
    real_r = mode_r >= M_IDDQ
    mode_r[real_r & (rng.random(R) < 0.03)] = M_NONE
    z_r = z2[ridx] + np.float32(0.3) * rng.standard_normal((R, T), dtype=np.float32)
    z_r[:, plan.func_idx] = 0.0
    v_r = _to_values(plan, z_r, pool)
    ff_r = _impose(plan, v_r, mode_r, dc1[ridx], rng)
    fail_r, nexec_r, pass_r, sbin_r, hbin_r = _evaluate(plan, v_r, ff_r, mode_r, pool)

    final_pass = pass1.copy()
    final_pass[ridx] = pass_r
    final_mode = mode1.copy()
    final_mode[ridx] = mode_r
    final_contact = (final_mode == M_OPEN) | (final_mode == M_SHORT)
    real_fail = (~final_pass & ~final_contact).reshape(W, N)

    # --- latent reliability ------------------------------------------------------------------
    padded = np.concatenate([real_fail, np.zeros((W, 1), dtype=bool)], axis=1)
    n_nb = padded[:, plan.nb].sum(axis=2).reshape(M).astype(np.int16)
    risk = 1.0 - np.exp(
        -(p.latent_base + p.latent_per_neighbor * n_nb + p.latent_outlier * outlier)
    )
    latent = final_pass & (rng.random(M) < risk)
    latent_ft1 = rng.random(M) < (0.35 if p.burn_in else 1.0)
    # the final measurement of a die: its retest row if retested, else its first-pass row
    pos_r = np.full(M, -1, dtype=np.int64)
    pos_r[ridx] = np.arange(R)

    def z_final(die: np.ndarray, t) -> np.ndarray:
        """Final z of lot die ``die`` on test ``t`` (an index, or an array: die x tests)."""
        if not np.ndim(t):
            out = z2[die, t]
        elif 4 * die.size > M:  # most of the lot: column by column
            out = np.empty((die.size, len(t)), dtype=z2.dtype)
            for j, tj in enumerate(np.asarray(t).tolist()):
                out[:, j] = z2[die, tj]
        else:
            out = z2[die][:, t]
        in_r = pos_r[die] >= 0
        if in_r.any():
            out[in_r] = z_r[pos_r[die[in_r]]][:, t] if np.ndim(t) else z_r[pos_r[die[in_r]], t]
        return out

    # raise a latent die's IDDQ (final measurement) by 2-4 sigma of ln IDDQ, inside the limit
    lat = np.flatnonzero(latent)
    want = rng.uniform(2.0, 4.0, lat.size)
    z_lat = z_final(lat, T_IDDQ)
    shift = np.clip(np.minimum(want, plan.k_min[T_IDDQ] - 0.3 - z_lat), 0.0, None)
    iddq_shift = np.zeros(M)
    iddq_shift[lat] = shift
    new_iddq = np.exp(plan.nominal[T_IDDQ] + plan.sigma[T_IDDQ] * (z_lat + shift))
    in_r = pos_r[lat] >= 0
    z_r[pos_r[lat[in_r]], T_IDDQ] += shift[in_r]
    z2[lat[~in_r], T_IDDQ] += shift[~in_r]
    v_r[pos_r[lat[in_r]], T_IDDQ] = new_iddq[in_r]
    v1[lat[~in_r], T_IDDQ] = new_iddq[~in_r]

    # --- times ---------------------------------------------------------------------------------
    tt1 = _test_time_ms(plan, nexec1, rng)
    tt_r = _test_time_ms(plan, nexec_r, rng)
    wafer_of_r = ridx // N
    per_wafer_time = tt1.reshape(W, N).sum(axis=1) / 1000.0 / p.n_sites + plan.n_touchdowns * 0.25
    per_wafer_time += np.bincount(
        wafer_of_r, weights=tt_r, minlength=W
    ) / 1000.0 + 0.25 * np.bincount(wafer_of_r, minlength=W)
    w_start, w_finish = [], []
    t = start
    for w in range(W):
        t = t + timedelta(seconds=60)
        w_start.append(t)
        t = t + timedelta(seconds=round(float(per_wafer_time[w])))
        w_finish.append(t)
    finish = t + timedelta(seconds=30)

    # --- die table (first pass, then the wafer's retests) --------------------------------------
    r_count = np.bincount(wafer_of_r, minlength=W)
    r_start = np.concatenate([[0], np.cumsum(r_count)])
    perm = np.concatenate(
        [
            np.concatenate(
                [np.arange(w * N, (w + 1) * N), M + np.arange(r_start[w], r_start[w + 1])]
            )
            for w in range(W)
        ]
    )
    n_rows = M + R
    die_idx = np.concatenate([np.arange(M), ridx])[perm]  # lot die index of each row
    wafer_of_row = die_idx // N
    k_of_row = die_idx % N
    is_retest = perm >= M
    passed_all = np.concatenate([pass1, pass_r])[perm]
    final_all = np.concatenate([~retested, np.ones(R, dtype=bool)])[perm]
    ntest_src = np.concatenate([nexec1, nexec_r])
    wafer_series = pl.Series("wafer_id", wafer_ids, dtype=pl.String).gather(wafer_of_row)
    x_row = plan.x[k_of_row]
    y_row = plan.y[k_of_row]
    die = build(
        "die",
        n_rows,
        {
            "run_id": run_id,
            "part_seq": np.arange(n_rows, dtype=np.int64),
            "product": p.name,
            "lot_id": lot_id,
            "wafer_id": wafer_series,
            "head": 1,
            "site": plan.site[k_of_row],
            "x": x_row,
            "y": y_row,
            "hbin": np.concatenate([hbin1, hbin_r])[perm],
            "sbin": np.concatenate([sbin1, sbin_r])[perm],
            "passed": passed_all,
            "part_flags": (np.where(is_retest, 0x02, 0) | np.where(passed_all, 0, 0x08)).astype(
                np.int16
            ),
            "num_tests": ntest_src.astype(np.int32)[perm],
            "test_time_ms": np.concatenate([tt1, tt_r])[perm],
            "part_id": part_ids(plan, n_rows),
            "retest_index": is_retest.astype(np.int16),
            "final": final_all,
        },
    ).with_columns(lot_ecids(plan, lot_id, wafer_ids, die_idx))

    # --- results -------------------------------------------------------------------------------
    # output order: parts by part_seq (first pass then retests, wafer by wafer), each part's
    # executed tests in flow order
    results, exec_count, fail_count = results_frame(
        pool,
        run_id=run_id,
        product=p.name,
        lot_id=lot_id,
        first=(v1, fail1, nexec1),
        retest=(v_r, fail_r, nexec_r),
        order=perm,
        test_num=plan.test_num,
        lo=plan.lo,
        hi=plan.hi,
        kind_words=plan.kind_words,
    )
    # --- tests, bins, wafers, runs -------------------------------------------------------------
    tests = tests_table(run_id, plan.tests, exec_count, fail_count)
    site_all = plan.site[k_of_row]
    bins = bin_summary(
        run_id,
        np.concatenate([hbin1, hbin_r])[perm],
        np.concatenate([sbin1, sbin_r])[perm],
        site_all,
        catalog.WS_HBINS,
        plan.sbins,
    )
    final_pass_w = final_pass.reshape(W, N)
    wafers = from_rows(
        "wafers",
        [
            {
                "run_id": run_id,
                "wafer_id": wafer_ids[w],
                "product": p.name,
                "lot_id": lot_id,
                "head": 1,
                "start_time": w_start[w],
                "finish_time": w_finish[w],
                "part_count": int(N + r_count[w]),
                "good_count": int(final_pass_w[w].sum()),
                "retest_count": int(r_count[w]),
                "abort_count": 0,
                "wafer_size": float(p.wafer_size_mm),
                "die_height": float(p.die_height_mm),
                "die_width": float(p.die_width_mm),
                "wafer_units": 3,
                "wafer_flat": p.notch,
                "center_x": 0,
                "center_y": 0,
                "pos_x": p.pos_x,
                "pos_y": p.pos_y,
            }
            for w in range(W)
        ],
    )
    runs = run_row(
        run_id=run_id,
        product=p.name,
        lot_id=lot_id,
        sublot_id=sublot_id,
        insertion=WS_INSERTION,
        temperature=25.0,
        tester=p.tester,
        program=f"{p.name}_{WS_INSERTION}",
        start=start,
        finish=finish,
        n_parts=n_rows,
    )

    # --- truth ---------------------------------------------------------------------------------
    cause = np.zeros(M, dtype=np.int64)  # index into CAUSES
    real = (mode1 >= M_IDDQ) & ~pass1
    cause[~pass1] = 5
    cause[real] = 1
    cause[real & from_background.reshape(M)] = 2
    cause[real & from_reticle.reshape(M)] = 3
    cause[is_contact1] = 4
    truth_die = build(
        "truth_die",
        M,
        {
            "run_id": run_id,
            "product": p.name,
            "lot_id": lot_id,
            "wafer_id": pl.Series(wafer_ids, dtype=pl.String).gather(np.repeat(np.arange(W), N)),
            "x": np.tile(plan.x, W),
            "y": np.tile(plan.y, W),
            "ring": np.tile(plan.ring, W),
            "cause": labels(cause, CAUSES),
            "defect_mode": labels(mode1, MODE_NAMES),
            "first_pass": pass1,
            "final_pass": final_pass,
            "retested": retested,
            "n_fail_neighbors": n_nb,
            "outlier": outlier,
            "latent_risk": risk,
            "latent_fail": latent,
            "latent_insertion": labels(
                np.where(latent, np.where(latent_ft1, 1, 2), 0), (None, "FT1", "PBI")
            ),
            "iddq_shift_sigma": iddq_shift,
        },
    )
    truth_outliers = _outlier_truth(
        plan, run_id, lot_id, wafer_ids, out_rows, z_final, final_pass, N, M
    )
    n_out_w = np.bincount(np.flatnonzero(outlier) // N, minlength=W)
    truth_wafers = from_rows(
        "truth_wafers",
        [
            {
                "run_id": run_id,
                "product": p.name,
                "lot_id": lot_id,
                "wafer_id": wafer_ids[w],
                "pattern": kinds[w],
                "params": json.dumps(wafer_params[w], sort_keys=True),
                "bad_site": None if site_used is None else site_used["site"],
                "reticle_repeat": None
                if wafer_reticle[w] is None
                else json.dumps(wafer_reticle[w], sort_keys=True),
                "n_fail_first": int((~pass1.reshape(W, N)[w]).sum()),
                "n_fail_final": int((~final_pass_w[w]).sum()),
                "n_outliers": int(n_out_w[w]),
                "n_latent": int(latent.reshape(W, N)[w].sum()),
            }
            for w in range(W)
        ],
    )
    truth_lots = from_rows(
        "truth_lots",
        [
            {
                "run_id": run_id,
                "product": p.name,
                "lot_id": lot_id,
                "n_wafers": W,
                "bad_site": None if site_used is None else site_used["site"],
                "bad_site_extra": None if site_used is None else site_used["extra"],
                "reticle_repeat": None
                if ret_used is None
                else json.dumps(ret_used, sort_keys=True),
                "lot_shift": json.dumps(
                    {
                        str(int(plan.test_num[i])): round(float(lot_shift[i]), 6)
                        for i in plan.param_idx
                    },
                    sort_keys=True,
                ),
            }
        ],
    )

    # --- what goes to assembly ---------------------------------------------------------------
    good = np.flatnonzero(final_pass)
    good_k = good % N
    goods = GoodDie(
        key=(lot_index * MAX_WAFERS - 1 + slots.astype(np.int32))[good // N],
        x=plan.x[good_k],
        y=plan.y[good_k],
        ring=plan.ring[good_k],
        latent=latent[good],
        latent_ft1=latent_ft1[good],
        z_ft=z_final(good, plan.ft_idx).astype(np.float32, copy=False),
        k=good_k.astype(np.int32),
        ready=finish,
    )
    tables = {
        "runs": runs,
        "wafers": wafers,
        "die": die,
        "tests": tests,
        "results": results,
        "bins": bins,
        "truth_lots": truth_lots,
        "truth_wafers": truth_wafers,
        "truth_die": truth_die,
        "truth_outliers": truth_outliers,
    }
    return LotResult(tables=tables, good=goods, finish=finish, n_die_rows=n_rows)


def _outlier_truth(plan, run_id, lot_id, wafer_ids, out_rows, z_final, final_pass, N, M):
    if not len(out_rows) or out_rows[0].size == 0:
        return build("truth_outliers", 0, {})
    cand, t_pick, s, m = out_rows
    W = len(wafer_ids)
    wz = cand // N
    value = plan.nominal[t_pick] + plan.sigma[t_pick] * (m + s)
    expected = plan.nominal[t_pick] + plan.sigma[t_pick] * m
    good = final_pass.reshape(W, N)
    sig_w = np.empty(cand.size)
    # robust z within each wafer over its final-good die: the quartiles interpolated between
    # order statistics (numpy's "linear" method). sigma > 0, so the order statistics of the
    # values are the values of the order statistics of z: one sort of float32 z per wafer and
    # test that carries an outlier there.
    for w in np.unique(wz).tolist():
        in_w = np.flatnonzero(wz == w)
        tests_w = np.unique(t_pick[in_w])
        k_good = np.flatnonzero(good[w])
        n_good = k_good.size
        pos = np.array([0.25, 0.5, 0.75]) * (n_good - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n_good - 1)
        zs = np.sort(z_final(w * N + k_good, tests_w).T, axis=1)
        nominal, sigma = plan.nominal[tests_w, None], plan.sigma[tests_w, None]
        v_lo = nominal + sigma * zs[:, lo]
        v_hi = nominal + sigma * zs[:, hi]
        q = v_lo + (pos - lo) * (v_hi - v_lo)  # (tests, 3)
        row = np.searchsorted(tests_w, t_pick[in_w])
        robust = (q[row, 2] - q[row, 0]) / 1.349
        with np.errstate(divide="ignore", invalid="ignore"):
            sig_w[in_w] = (value[in_w] - q[row, 1]) / robust
    order = np.lexsort((t_pick, cand))
    return build(
        "truth_outliers",
        cand.size,
        {
            "run_id": run_id,
            "product": plan.config.name,
            "lot_id": lot_id,
            "wafer_id": pl.Series(wafer_ids, dtype=pl.String).gather(wz[order]),
            "x": plan.x[(cand % N)[order]],
            "y": plan.y[(cand % N)[order]],
            "test_num": plan.test_num[t_pick[order]],
            "test_name": pl.Series([t.name for t in plan.tests], dtype=pl.String).gather(
                t_pick[order]
            ),
            "value": value[order],
            "expected": expected[order],
            "sigma": s[order],
            "sigma_wafer": sig_w[order],
        },
    )


def tests_table(run_id: str, tests, exec_count, fail_count) -> pl.DataFrame:
    """The ``tests`` rows of a run (TSR-like): each test's definition, executions and fails."""
    return from_rows(
        "tests",
        [
            {
                "run_id": run_id,
                "test_num": int(t.test_num),
                "kind": t.kind,
                "test_name": t.name,
                "lo_limit": t.lo_limit,
                "hi_limit": t.hi_limit,
                "units": t.units,
                "res_scale": 0,
                "llm_scale": 0,
                "hlm_scale": 0,
                "exec_count": int(exec_count[i]),
                "fail_count": int(fail_count[i]),
            }
            for i, t in enumerate(tests)
        ],
    )


def bin_summary(run_id, hbin, sbin, site, hbin_defs, sbin_defs) -> pl.DataFrame:
    """HBR/SBR-style counts over every part row (retests included), per site (head 1) and for
    all sites (head 255, site 255), like a tester's summary records."""
    rows = []
    site = np.asarray(site, dtype=np.int64)
    n_site = int(site.max()) + 1 if site.size else 1
    for kind, bins, defs in (("H", hbin, hbin_defs), ("S", sbin, sbin_defs)):
        info = {d.bin: d for d in defs}
        bins = np.asarray(bins, dtype=np.int64)
        counts = np.bincount(bins * n_site + site)
        for code in np.flatnonzero(counts).tolist():
            b, s = divmod(code, n_site)
            rows.append((kind, b, 1, s, int(counts[code]), info.get(b)))
        totals = np.bincount(bins)
        for b in np.flatnonzero(totals).tolist():
            rows.append((kind, b, 255, 255, int(totals[b]), info.get(b)))
    return from_rows(
        "bins",
        [
            {
                "run_id": run_id,
                "kind": kind,
                "bin": b,
                "head": head,
                "site": s,
                "count": n,
                "pass_fail": d.pass_fail if d else "F",
                "name": d.name if d else f"BIN{b}",
            }
            for kind, b, head, s, n, d in rows
        ],
    )


def run_row(
    *,
    run_id: str,
    product: str,
    lot_id: str,
    sublot_id: str | None,
    insertion: str,
    temperature: float | None,
    tester: str | None,
    program: str | None,
    start: datetime,
    finish: datetime,
    n_parts: int,
    source: str | None = None,
) -> pl.DataFrame:
    """The one ``runs`` row of a synthetic run."""
    return from_rows(
        "runs",
        [
            {
                "run_id": run_id,
                "product": product,
                "lot_id": lot_id,
                "sublot_id": sublot_id,
                "insertion": insertion,
                "temperature": temperature,
                "tester": tester,
                "tester_type": "V93000" if tester else None,
                "node": tester.split("-")[0] + "-HOST" if tester else None,
                "program": program,
                "program_rev": "1.0" if program else None,
                "mode_code": "P" if tester else None,
                "retest_code": None,
                "facility": "BEFAB1",
                "start_time": start,
                "finish_time": finish,
                "stdf_version": 4 if tester else None,
                "n_parts": n_parts,
                "status": "ok",
                "source_path": source or f"synth://{product}/{lot_id}/{insertion}",
            }
        ],
    )
