"""Assembly and final test of one assembly lot: genealogy, step rejects, FT1 and post-burn-in.

ECID format
-----------
``"<lot_id>:<wafer_id>:<x>:<y>"`` — the fab lot id, the wafer id exactly as in the ``die`` and
``wafers`` tables (two digits, the slot: ``"07"``), and the die's tester (data) coordinates as
signed decimal integers, e.g. ``"AX100L0003:07:-12:5"``. Lot ids are letters and digits, so the
string splits on ``":"`` into exactly four fields (:func:`decode_ecid`). Wafer sort programs it
into every die (the ``ecid`` column of WS ``die`` rows); final test reads it back (``ecid`` of FT
``die`` and ``units`` rows), null when the read fails (``ecid_read_fail_rate``): those units trace
through the genealogy edges only.

Flow of an assembly lot (DOMAIN.md §4.1, §4.3)
-----------------------------------------------
Good die of consecutive wafers (of one or several fab lots; a wafer may be split between two
assembly lots) are sawn (SAW rejects: die lost before placement; die of the outermost ring crack 5x
more often — a wafer-origin effect), placed in order on strips of ``strip_rows x strip_cols``
positions (``strip_id = "<assembly_lot>-S001"``, row-major positions, ``unit_id =
"<assembly_lot>-00001"`` numbered in placement order), then DIE_ATTACH, WIRE_BOND, MOLD, MARK,
TRIM_FORM reject units in place (X-outs). Each step of a lot runs on one machine of its pool with
one material lot (material lots change every three assembly lots). Planted: the bad wire bonder
``WB-03`` (4x wire-bond rejects and 10x hidden assembly defects that fail final-test continuity),
and 3x mold rejects on the first and last strip row (strip-edge effect).

Final test: ``FT1`` (125 °C) tests every unit that passed assembly; ``PBI`` (post-burn-in, 25 °C)
tests the FT1-good units. Fails come from the wafer's latent reliability fails (truth_die), hidden
assembly defects, socket contact (recovers on retest), natural parametric tails (values carried
from the die's wafer-sort measurement with 0.5 sigma of test-to-test noise) and a small random
rate. Retests of a unit follow the lot's first pass, with ``part_flags`` bit 0 (same PART_ID).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import polars as pl
from backend_fab_kernels.synth_kernels import evaluate_parts, standard_normal_grid

from backend_fab.synth import catalog
from backend_fab.synth._frames import (
    BufferPool,
    build,
    decimal_table,
    from_rows,
    labels,
    string_table,
    table_views,
    view_words,
)
from backend_fab.synth.catalog import ASSEMBLY_STEPS
from backend_fab.synth.tester import (
    T_CONT,
    T_IDDQ,
    T_MBIST,
    T_SCAN,
    GoodDie,
    ProductPlan,
    bin_summary,
    ecid_column,
    results_frame,
    run_row,
    tests_table,
    wafer_names,
)

__all__ = ["ECID_FORMAT", "decode_ecid", "encode_ecid"]

ECID_FORMAT = "{lot_id}:{wafer_id}:{x}:{y}"

BAD_BONDER = "WB-03"
#: why a unit fails a final-test insertion (truth_units.ft1_cause / pbi_cause); None: it passes
FT_CAUSES = (None, "latent", "assembly", "contact", "random", "parametric")
FT_TEMPS = {"FT1": 125.0, "PBI": 25.0}


def encode_ecid(lot_id: str, wafer_id: str, x: int, y: int) -> str:
    """The ECID string of a die (see the module docstring)."""
    return ECID_FORMAT.format(lot_id=lot_id, wafer_id=wafer_id, x=int(x), y=int(y))


def decode_ecid(ecid: str) -> tuple[str, str, int, int]:
    """``(lot_id, wafer_id, x, y)`` of an ECID string; ValueError when it is malformed."""
    parts = ecid.split(":")
    if len(parts) != 4 or not parts[0] or not parts[1]:
        raise ValueError(f"ECID {ecid!r} is not '<lot_id>:<wafer_id>:<x>:<y>'")
    try:
        return parts[0], parts[1], int(parts[2]), int(parts[3])
    except ValueError:
        raise ValueError(f"ECID {ecid!r}: x and y must be integers") from None


def _shift(t: datetime) -> str:
    h = t.hour
    return "A" if 6 <= h < 14 else ("B" if 14 <= h < 22 else "C")


@dataclass
class AssemblyOutput:
    runs: list[dict[str, pl.DataFrame]]  # ASSEMBLY, FT1[, PBI]
    finish: datetime


def assemble(
    plan: ProductPlan,
    die: GoodDie,
    *,
    assembly_lot_id: str,
    assembly_index: int,
    seed: int,
    run_ids: dict[str, str],
    split_wafers: frozenset[int] | set[int],
    pool: BufferPool | None = None,
) -> AssemblyOutput:
    """Assembly, FT1 and (with burn-in) PBI of one assembly lot made of ``die``.

    ``run_ids``: insertion (``ASSEMBLY``, ``FT1``, ``PBI``) -> run id. ``split_wafers``: wafer
    keys (:attr:`GoodDie.key`) whose die also went to another assembly lot (their wafer-level
    genealogy edge is a ``split``; the others are ``merge``). ``pool``: where the big arrays come
    from (a generator passes one pool to all its runs).
    """
    pool = BufferPool() if pool is None else pool
    p = plan.config
    rng = np.random.default_rng([seed, plan.index, assembly_index, 3])
    n = die.size
    start = die.ready + timedelta(hours=6)

    # --- equipment, materials and rates per step ----------------------------------------------
    excursion = rng.random() < p.bond_excursion_rate
    steps = []
    t = start
    for k, step in enumerate(ASSEMBLY_STEPS):
        if step.step == "WIRE_BOND" and excursion:
            equipment = BAD_BONDER
        else:
            machines = [f"{step.equipment}-{i:02d}" for i in range(1, step.n_equipment + 1)]
            if step.step == "WIRE_BOND":
                machines.remove(BAD_BONDER)
            equipment = machines[int(rng.integers(0, len(machines)))]
        material = (
            f"{step.material}{2400 + assembly_index // 3 + 17 * k:05d}" if step.material else None
        )
        rate = step.rate * (4.0 if (step.step == "WIRE_BOND" and excursion) else 1.0)
        seconds = round(3600.0 * (float(rng.uniform(1.0, 3.0)) + n / 20000.0))
        steps.append((step, equipment, material, rate, t, t + timedelta(seconds=seconds)))
        t = t + timedelta(seconds=seconds + round(3600.0 * float(rng.uniform(0.2, 1.0))))
    asm_finish = t

    # --- saw: die lost before placement -------------------------------------------------------
    saw_step, *_rest = steps[0]
    saw_rate = steps[0][3] * np.where(die.ring == 0, 5.0, 1.0)
    saw_rej = rng.random(n) < saw_rate
    saw_code = _codes(rng, saw_step, int(saw_rej.sum()))  # codes of the step, as indices
    placed = np.flatnonzero(~saw_rej)
    n1 = placed.size

    # --- strip placement ------------------------------------------------------------------------
    per_strip = p.strip_rows * p.strip_cols
    pos = np.arange(n1)
    strip_no = pos // per_strip + 1
    row = ((pos % per_strip) // p.strip_cols).astype(np.int32)
    col = (pos % p.strip_cols).astype(np.int32)
    strips = decimal_table(f"{assembly_lot_id}-S", 1, int(strip_no[-1]) if n1 else 0, 3)
    strip_id = table_views("strip_id", *strips, strip_no - 1)
    unit_id = table_views("unit_id", *decimal_table(f"{assembly_lot_id}-", 1, n1, 5), pos)

    # --- in-strip steps: first failing step rejects the unit ----------------------------------
    rates = np.empty((n1, len(steps) - 1))
    for j, (step, _e, _m, rate, _s, _f) in enumerate(steps[1:]):
        rates[:, j] = rate
        if step.step == "MOLD":
            edge = (row == 0) | (row == p.strip_rows - 1)
            rates[:, j] = np.where(edge, rate * 3.0, rate)
    hit = rng.random((n1, len(steps) - 1)) < rates
    rejected = hit.any(axis=1)
    rej_step = np.where(rejected, np.argmax(hit, axis=1) + 1, 0)  # index into steps
    rej_code = np.full(n1, -1, dtype=np.int64)  # index into the step's codes
    for j in range(1, len(steps)):
        idx = np.flatnonzero(rej_step == j)
        rej_code[idx] = _codes(rng, steps[j][0], idx.size)
    ok = ~rejected
    asm_defect = ok & (rng.random(n1) < 0.001 * (10.0 if excursion else 1.0))

    # --- assembly_steps rows ------------------------------------------------------------------
    asm_rows = []
    truth_asm = []
    qty_in = n
    for j, (step, equipment, material, rate, s0, s1) in enumerate(steps):
        codes = saw_code if j == 0 else rej_code[rej_step == j]
        lost = int(codes.size)
        qty_out = qty_in - lost
        base = {
            "assembly_lot_id": assembly_lot_id,
            "step": step.step,
            "step_seq": j + 1,
            "qty_in": qty_in,
            "qty_out": qty_out,
            "equipment": equipment,
            "material_lot": material,
            "shift": _shift(s0),
            "start_time": s0,
            "end_time": s1,
            "run_id": run_ids["ASSEMBLY"],
        }
        if lost:
            counts = np.bincount(codes, minlength=len(step.codes))
            for (code, _share), c in zip(step.codes, counts.tolist(), strict=True):
                if c:
                    asm_rows.append({**base, "reject_code": code, "reject_qty": c})
        else:
            asm_rows.append({**base, "reject_code": "", "reject_qty": 0})
        truth_asm.append(
            {
                "run_id": run_ids["ASSEMBLY"],
                "assembly_lot_id": assembly_lot_id,
                "step": step.step,
                "equipment": equipment,
                "material_lot": material,
                "excursion": bool(excursion and step.step == "WIRE_BOND"),
                "reject_rate": rate,
            }
        )
        qty_in = qty_out

    # --- genealogy ------------------------------------------------------------------------------
    if "wafer_names" not in plan.extra:
        plan.extra["wafer_names"] = wafer_names(p)
    lot_names, wafer_names_ = plan.extra["wafer_names"]
    lot_p = lot_names.gather(die.key[placed])
    waf_p = wafer_names_.gather(die.key[placed])
    gen_die = build(
        "genealogy",
        n1,
        {
            "edge_id": unit_id,
            "relation": "transfer",
            "from_lot_id": lot_p,
            "from_wafer_id": waf_p,
            "from_x": die.x[placed],
            "from_y": die.y[placed],
            "assembly_lot_id": assembly_lot_id,
            "strip_id": strip_id,
            "row": row,
            "col": col,
            "unit_id": unit_id,
            "qty": 1,
            "source": "synth",
            "run_id": run_ids["ASSEMBLY"],
        },
    )
    wkeys, wcounts = np.unique(die.key, return_counts=True)  # keys ascend in die order
    gen_rows = []
    for key, cnt in zip(wkeys.tolist(), wcounts.tolist(), strict=True):
        lot, wafer = lot_names[key], wafer_names_[key]
        gen_rows.append(
            {
                "edge_id": f"{assembly_lot_id}<{lot}:{wafer}",
                "relation": "split" if key in split_wafers else "merge",
                "from_lot_id": lot,
                "from_wafer_id": wafer,
                "assembly_lot_id": assembly_lot_id,
                "qty": cnt,
                "source": "synth",
                "run_id": run_ids["ASSEMBLY"],
            }
        )
    genealogy = pl.concat([from_rows("genealogy", gen_rows), gen_die])

    # --- final test -----------------------------------------------------------------------------
    ecid_ok = rng.random(n1) >= p.ecid_read_fail_rate
    if "wafer_heads" not in plan.extra:  # "<lot_id>:<wafer_id>" of every wafer key
        plan.extra["wafer_heads"] = string_table(
            f"{lot}:{wafer}" for lot, wafer in zip(lot_names, wafer_names_, strict=True)
        )
    ecid_read = ecid_column(
        plan, plan.extra["wafer_heads"], die.key[placed], die.k[placed], ecid_ok
    )
    latent = die.latent[placed]
    latent_ft1 = die.latent_ft1[placed]
    z_ft = die.z_ft[placed]

    ft_start = asm_finish + timedelta(hours=4)
    ft1_cause = np.zeros(n1, dtype=np.int64)  # index into FT_CAUSES
    pbi_cause = np.zeros(n1, dtype=np.int64)
    tested = np.flatnonzero(ok)
    ft1 = _final_test(
        plan,
        "FT1",
        rng,
        tested,
        unit_id,
        ecid_read,
        assembly_lot_id,
        strip_id,
        row,
        col,
        z_ft,
        latent & latent_ft1,
        asm_defect,
        ft1_cause,
        run_ids["FT1"],
        ft_start,
        pool,
    )
    runs = [None, ft1.tables]
    finish = ft1.finish
    if p.burn_in:
        survivors = tested[ft1.final_pass]
        pbi = _final_test(
            plan,
            "PBI",
            rng,
            survivors,
            unit_id,
            ecid_read,
            assembly_lot_id,
            strip_id,
            row,
            col,
            z_ft,
            latent & ~latent_ft1,
            np.zeros(n1, dtype=bool),
            pbi_cause,
            run_ids["PBI"],
            ft1.finish + timedelta(hours=48),
            pool,
        )
        runs.append(pbi.tables)
        finish = pbi.finish

    # reject codes of every in-strip step, flattened: index 0 = no reject
    code_names = [None]
    first_code = {}
    for j in range(1, len(steps)):
        first_code[j] = len(code_names)
        code_names += [c for c, _ in steps[j][0].codes]
    rej_code_flat = np.zeros(n1, dtype=np.int64)
    for j, base_idx in first_code.items():
        sel = rej_step == j
        rej_code_flat[sel] = base_idx + rej_code[sel]
    truth_units = build(
        "truth_units",
        n1,
        {
            "run_id": run_ids["ASSEMBLY"],
            "unit_id": unit_id,
            "product": p.name,
            "lot_id": lot_p,
            "wafer_id": waf_p,
            "x": die.x[placed],
            "y": die.y[placed],
            "assembly_lot_id": assembly_lot_id,
            "strip_id": strip_id,
            "row": row,
            "col": col,
            "assembly_reject_step": pl.Series(
                [None] + [s[0].step for s in steps[1:]], dtype=pl.String
            ).gather(rej_step),
            "assembly_reject_code": labels(rej_code_flat, code_names),
            "assembly_defect": asm_defect,
            "latent_fail": latent,
            "latent_insertion": labels(
                np.where(latent, np.where(latent_ft1, 1, 2), 0), (None, "FT1", "PBI")
            ),
            "ft1_cause": labels(ft1_cause, FT_CAUSES),
            "pbi_cause": labels(pbi_cause, FT_CAUSES),
        },
    )
    assy = {
        "runs": run_row(
            run_id=run_ids["ASSEMBLY"],
            product=p.name,
            lot_id=assembly_lot_id,
            sublot_id=None,
            insertion="ASSEMBLY",
            temperature=None,
            tester=None,
            program=None,
            start=start,
            finish=asm_finish,
            n_parts=n1,
        ),
        "assembly_steps": from_rows("assembly_steps", asm_rows),
        "genealogy": genealogy,
        "truth_units": truth_units,
        "truth_assembly": from_rows("truth_assembly", truth_asm),
    }
    runs[0] = assy
    return AssemblyOutput(runs=runs, finish=finish)


def _codes(rng, step, k: int) -> np.ndarray:
    """Reject-code indices (into ``step.codes``) of ``k`` rejects, drawn by the codes' shares."""
    w = np.array([s for _, s in step.codes], dtype=np.float64)
    if k == 0:
        return np.empty(0, dtype=np.int64)
    return rng.choice(w.size, size=k, p=w / w.sum())


@dataclass
class _FtResult:
    tables: dict[str, pl.DataFrame]
    final_pass: np.ndarray  # per tested unit (in the order given)
    finish: datetime


# FT test program: continuity, IDDQ, scan, mbist and the product's first pat tests (plan.ft_idx[1:])
_FT_SOCKET_CONTACT = {"FT1": 0.004, "PBI": 0.003}
_FT_RANDOM = {"FT1": 0.0015, "PBI": 0.0005}
_FT_OFFSET = {"FT1": 0.5, "PBI": 0.2}  # hot test raises leakage; in sigmas of ln IDDQ
_FT_FUNC_TESTS = np.array([2, 3], dtype=np.int64)  # scan, MBIST in the FT flow


def _final_test(
    plan: ProductPlan,
    insertion: str,
    rng,
    units: np.ndarray,
    unit_id: pl.Series,
    ecid: pl.Series,
    ft_lot: str,
    strip_id: pl.Series,
    row: np.ndarray,
    col: np.ndarray,
    z_ft: np.ndarray,
    latent_here: np.ndarray,
    asm_defect: np.ndarray,
    cause_out: np.ndarray,
    run_id: str,
    start: datetime,
    pool: BufferPool,
) -> _FtResult:
    p = plan.config
    tests = [plan.tests[T_CONT], plan.tests[T_IDDQ], plan.tests[T_SCAN], plan.tests[T_MBIST]]
    tests += [plan.tests[i] for i in plan.ft_idx[1:]]
    T = len(tests)
    n = units.size
    nominal = np.array([t.nominal for t in tests])
    sigma = np.array([t.sigma for t in tests])
    lo = np.array([-np.inf if t.lo_limit is None else t.lo_limit for t in tests])
    hi = np.array([np.inf if t.hi_limit is None else t.hi_limit for t in tests])

    # unit x test noise from one counter-based stream (columns 2-3, the functional tests, unused)
    noise = standard_normal_grid(rng.integers(0, 2**63, 1, dtype=np.uint64), n * T).reshape(n, T)
    z = np.zeros((n, T))
    z[:, 0] = noise[:, 0]
    z[:, 1] = z_ft[units, 0] + _FT_OFFSET[insertion] + 0.5 * noise[:, 1]
    if T > 4:
        z[:, 4:] = z_ft[units, 1:] + 0.5 * noise[:, 4:]

    # causes, in flow order (contact first)
    contact = rng.random(n) < _FT_SOCKET_CONTACT[insertion]
    asm = asm_defect[units]
    lat = latent_here[units]
    rnd = rng.random(n) < _FT_RANDOM[insertion]
    lat_mode = rng.choice(3, size=n, p=[0.6, 0.25, 0.15])  # iddq, scan, mbist
    open_short = rng.random(n) < 0.7

    def values(z, contact, asm, lat, rnd, lat_mode, open_short):
        v = nominal + sigma * z
        v[:, 1] = np.exp(v[:, 1])
        v[:, 2:4] = np.nan
        bad_cont = contact | asm
        v[bad_cont & open_short, 0] = rng.uniform(-1.9, -1.5, int((bad_cont & open_short).sum()))
        v[bad_cont & ~open_short, 0] = rng.uniform(-0.06, 0.0, int((bad_cont & ~open_short).sum()))
        iddq = lat & (lat_mode == 0)
        v[iddq, 1] = hi[1] * np.exp(rng.uniform(0.2, 2.5, int(iddq.sum())))
        # scan and MBIST have no value: their fails come from the latent mode or a random fail;
        # a continuity fail stops the unit (it executed the first test only)
        override = np.stack([(lat & (lat_mode == 1)) | rnd, lat & (lat_mode == 2)], axis=1)
        stop = np.zeros(z.shape[0], dtype=bool)
        fail, n_exec, first = evaluate_parts(v, lo, hi, _FT_FUNC_TESTS, override, stop)
        any_fail = first >= 0
        first = np.maximum(first, 0)
        sb = np.array([100, 200, 300, 301] + [500] * (T - 4), dtype=np.int32)[first]
        sb[(first == 0) & (v[:, 0] > hi[0])] = 101
        sb = np.where(any_fail, sb, 1).astype(np.int32)
        return v, fail, n_exec, ~any_fail, sb

    v1, f1, e1, pass1, sb1 = values(z, contact, asm, lat, rnd, lat_mode, open_short)
    cont_fail = ~pass1 & ((sb1 == 100) | (sb1 == 101))
    retested = ~pass1 & (rng.random(n) < np.where(cont_fail, 0.95, 0.2))
    ridx = np.flatnonzero(retested)
    contact_r = contact[ridx] & (rng.random(ridx.size) < 0.1)
    z_r = z[ridx] + rng.normal(0.0, 0.3, (ridx.size, T))
    v_r, f_r, e_r, pass_r, sb_r = values(
        z_r, contact_r, asm[ridx], lat[ridx], rnd[ridx], lat_mode[ridx], open_short[ridx]
    )
    final_pass = pass1.copy()
    final_pass[ridx] = pass_r
    final_sb = sb1.copy()
    final_sb[ridx] = sb_r

    # truth: why a unit finally fails here
    # (a fail with none of the planted causes is a parametric tail, e.g. a raised IDDQ)
    why = np.zeros(n, dtype=np.int64)  # index into FT_CAUSES
    failed = ~final_pass
    why[failed] = FT_CAUSES.index("parametric")
    why[failed & contact] = FT_CAUSES.index("contact")  # not retested, or contact again
    why[failed & rnd] = FT_CAUSES.index("random")
    why[failed & lat] = FT_CAUSES.index("latent")
    why[failed & asm] = FT_CAUSES.index("assembly")
    cause_out[units] = why

    hb_lut = {b.bin: b.hbin for b in catalog.FT_SBINS}
    lut = np.zeros(502, dtype=np.int32)
    for s, h in hb_lut.items():
        lut[s] = h

    n_rows = n + ridx.size
    src_unit = np.concatenate([np.arange(n), ridx])
    is_retest = np.arange(n_rows) >= n
    sb_all = np.concatenate([sb1, sb_r])
    pass_all = np.concatenate([pass1, pass_r])
    final_all = np.concatenate([~retested, np.ones(ridx.size, dtype=bool)])
    n_exec = np.concatenate([e1, e_r])
    site = (np.arange(n_rows) % p.ft_sites).astype(np.int16)
    tt = 30.0 + 9.0 * n_exec + rng.normal(0.0, 2.0, n_rows)
    seconds = np.cumsum(tt / 1000.0 / p.ft_sites + 0.35 / p.ft_sites)
    finish = start + timedelta(seconds=round(float(seconds[-1]) if n_rows else 0.0) + 60)
    t_us = np.datetime64(start.replace(tzinfo=None), "us") + (np.round(seconds) * 1e6).astype(
        "timedelta64[us]"
    )
    g = units[src_unit]
    uid = unit_id.gather(g)
    ecid_rows = ecid.gather(g)
    die_frame = build(
        "die",
        n_rows,
        {
            "run_id": run_id,
            "part_seq": np.arange(n_rows, dtype=np.int64),
            "product": p.name,
            "lot_id": ft_lot,
            "head": 1,
            "site": site,
            "hbin": lut[sb_all],
            "sbin": sb_all,
            "passed": pass_all,
            "part_flags": (np.where(is_retest, 0x01, 0) | np.where(pass_all, 0, 0x08)).astype(
                np.int16
            ),
            "num_tests": n_exec.astype(np.int32),
            "test_time_ms": np.round(np.maximum(tt, 5.0), 3),
            "part_id": uid,
            "part_txt": ecid_rows,  # the test program logs the ECID it read
            "retest_index": is_retest.astype(np.int16),
            "final": final_all,
            "ecid": ecid_rows,
        },
    )
    results, exec_count, fail_count = results_frame(
        pool,
        run_id=run_id,
        product=p.name,
        lot_id=ft_lot,
        first=(v1, f1, e1),
        retest=(v_r, f_r, e_r),
        order=np.arange(n_rows),
        test_num=np.array([t.test_num for t in tests], dtype=np.int64),
        lo=lo,
        hi=hi,
        kind_words=view_words([t.kind for t in tests]).view(np.uint32).reshape(T, 4),
    )
    tests_frame = tests_table(run_id, tests, exec_count, fail_count)
    bins = bin_summary(run_id, lut[sb_all], sb_all, site, catalog.FT_HBINS, catalog.FT_SBINS)
    # units: the final row of each unit
    last_row = np.arange(n)
    last_row[ridx] = n + np.arange(ridx.size)
    units_frame = build(
        "units",
        n,
        {
            "unit_id": unit_id.gather(units),
            "insertion": insertion,
            "ecid": ecid.gather(units),
            "ft_lot_id": ft_lot,
            "assembly_lot_id": ft_lot,
            "strip_id": strip_id.gather(units),
            "row": row[units],
            "col": col[units],
            "site": site[last_row],
            "hbin": lut[final_sb],
            "sbin": final_sb,
            "passed": final_pass,
            "test_time": t_us[last_row] if n else np.empty(0, dtype="datetime64[us]"),
            "run_id": run_id,
        },
    )
    runs = run_row(
        run_id=run_id,
        product=p.name,
        lot_id=ft_lot,
        sublot_id=None,
        insertion=insertion,
        temperature=FT_TEMPS[insertion],
        tester=f"FT{'1' if insertion == 'FT1' else '2'}-HND",
        program=f"{p.name}_{insertion}",
        start=start,
        finish=finish,
        n_parts=n_rows,
    )
    tables = {
        "runs": runs,
        "die": die_frame,
        "tests": tests_frame,
        "results": results,
        "bins": bins,
        "units": units_frame,
    }
    return _FtResult(tables=tables, final_pass=final_pass, finish=finish)
