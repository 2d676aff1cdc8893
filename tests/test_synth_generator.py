"""The synthetic fab on the `ci` scenario: determinism, schemas, truth consistent with the data,
retests, genealogy."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import polars as pl
import pytest

from backend_fab import schema
from backend_fab.synth import generate_fab
from backend_fab.synth.assembly import decode_ecid, encode_ecid
from backend_fab.synth.generator import RUN_TABLES

KEY = ["lot_id", "wafer_id", "x", "y"]


@pytest.fixture(scope="module")
def fab():
    return generate_fab("ci")


@pytest.fixture(scope="module")
def t(fab):
    """Every table over all runs, plus the wafer-sort die rows with their insertion."""
    tables = {name: fab.table(name) for name in ("runs", *RUN_TABLES)}
    ins = tables["runs"].select("run_id", "insertion")
    tables["die_i"] = tables["die"].join(ins, on="run_id")
    tables["ws"] = tables["die_i"].filter(pl.col("insertion") == "WS1")
    tables["layout"] = fab.layouts["AX100"]
    return tables


def _digest(runs) -> list[str]:
    out = []
    for run in runs:
        for name in sorted(run):
            buf = io.BytesIO()
            run[name].write_ipc(buf)
            out.append(f"{name}:{hashlib.sha256(buf.getvalue()).hexdigest()}")
    return out


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(fab):
    again = generate_fab("ci")
    assert _digest(again.runs) == _digest(fab.runs)
    # lazily regenerated runs are the same as the kept ones
    assert _digest(list(generate_fab("ci").iter_runs())) == _digest(fab.runs)
    other = next(generate_fab("ci", seed=1).iter_runs())
    first = fab.runs[0]
    assert other["runs"].item(0, "run_id") != first["runs"].item(0, "run_id")
    assert not other["results"]["value"].equals(first["results"]["value"])


def _synth_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name.startswith("backend-fab-synth")]


def test_runs_and_bytes_do_not_depend_on_the_generator_threads(fab):
    kept = _digest(fab.runs)
    for workers in (1, 3):
        assert _digest(generate_fab("ci").iter_runs(workers=workers)) == kept, workers
    # wafer sort alone: exactly the WS1 runs of the whole fab, whatever the threads
    ws = [run for run in fab.runs if run["runs"].item(0, "insertion") == "WS1"]
    for workers in (1, 2):
        only = list(generate_fab("ci").iter_runs(workers=workers, back_end=False))
        assert _digest(only) == _digest(ws)
    assert _digest(fab.iter_runs(back_end=False)) == _digest(ws)  # from the kept runs
    with pytest.raises(ValueError, match="workers"):
        next(generate_fab("ci").iter_runs(workers=0))


def test_a_failing_lot_is_raised_to_the_consumer_and_no_thread_is_left(monkeypatch):
    import backend_fab.synth.generator as gen

    real = gen.sort_lot

    def failing(plan, **kw):
        if kw["lot_index"] == 1:
            raise RuntimeError(f"planted failure in {kw['lot_id']}")
        return real(plan, **kw)

    monkeypatch.setattr(gen, "sort_lot", failing)
    seen = []
    with pytest.raises(RuntimeError, match="planted failure in AXL0002"):
        for run in generate_fab("ci").iter_runs(workers=2):
            seen.append(run["runs"].item(0, "insertion"))
    assert seen[0] == "WS1"  # the runs before the failure came out, in order
    assert _synth_threads() == []
    # a consumer that stops early: the threads stop with the iterator
    monkeypatch.setattr(gen, "sort_lot", real)
    it = generate_fab("ci").iter_runs(workers=2)
    next(it)
    it.close()
    assert _synth_threads() == []


def test_every_table_conforms_to_its_schema_and_carries_its_run_id(fab):
    seen = set()
    for run in fab.runs:
        assert run["runs"].height == 1
        run_id = run["runs"].item(0, "run_id")
        assert len(run_id) == 64 and run_id not in seen
        seen.add(run_id)
        for name, frame in run.items():
            checked = schema.validate(name, frame)  # types, column order, keys unique and set
            assert checked.columns == frame.columns
            if name != "runs":
                assert schema.table(name).run_scoped
                assert frame.get_column("run_id").unique().to_list() in ([run_id], [])
    assert schema.validate("layouts", fab.layouts_frame()).height == 1
    insertions = fab.table("runs").get_column("insertion").value_counts()
    counts = dict(insertions.iter_rows())
    assert counts["WS1"] == 2 and counts["ASSEMBLY"] == counts["FT1"] == counts["PBI"] >= 2


def test_ws_die_cover_every_gross_die_once_per_wafer(t):
    layout = t["layout"]
    first = t["ws"].filter(pl.col("retest_index") == 0)
    per_wafer = first.group_by("run_id", "wafer_id").agg(pl.len(), pl.struct("x", "y").n_unique())
    assert (per_wafer.get_column("len") == layout.n_gross).all()
    assert (per_wafer.get_column("x").cast(pl.Int64) == layout.n_gross).all()
    x, y = layout.from_canonical(*layout.gross_die())
    gross = set(zip(x.tolist(), y.tolist(), strict=True))
    assert set(first.select("x", "y").unique().iter_rows()) == gross
    # sites: every touchdown holds distinct sites; all sites used
    assert set(first.get_column("site").unique()) == set(range(4))


def test_retests_and_final_flags_are_consistent(t):
    ws = t["ws"].sort("run_id", "part_seq")
    finals = ws.group_by("run_id", *KEY[1:]).agg(pl.col("final").sum(), pl.len())
    assert (finals.get_column("final") == 1).all()
    assert finals.get_column("len").max() == 2
    retest = ws.filter(pl.col("retest_index") == 1)
    assert retest.height > 0
    assert (retest.get_column("final")).all()
    assert ((retest.get_column("part_flags") & 0x02) != 0).all()
    both = ws.filter(pl.col("retest_index") == 0).join(
        retest, on=["run_id", "wafer_id", "x", "y"], suffix="_r"
    )
    assert not both.get_column("final").any()
    assert not both.get_column("passed").any()  # only fails are retested
    assert (both.get_column("part_seq_r") > both.get_column("part_seq")).all()
    # a retest row follows its wafer's whole first pass
    last_first = (
        ws.filter(pl.col("retest_index") == 0)
        .group_by("run_id", "wafer_id")
        .agg(pl.col("part_seq").max().alias("last"))
    )
    assert (
        retest.join(last_first, on=["run_id", "wafer_id"])
        .select((pl.col("part_seq") > pl.col("last")).all())
        .item()
    )
    # contact bins recover often, real defects rarely
    rec = both.group_by("hbin").agg(pl.col("passed_r").mean().alias("recovery"), pl.len())
    rec = dict(rec.select("hbin", "recovery").iter_rows())
    assert rec[2] > 0.6
    assert rec[3] < 0.2 and rec[4] < 0.2
    # passed, bins and part flags agree
    die = t["die"]
    assert (die.get_column("passed") == (die.get_column("hbin") == 1)).all()
    assert (die.get_column("passed") == ((die.get_column("part_flags") & 0x08) == 0)).all()
    assert die.filter(pl.col("passed")).get_column("sbin").unique().to_list() == [1]


def test_results_tests_and_bins_agree_with_the_die(t):
    res, die, tests, bins = t["results"], t["die"], t["tests"], t["bins"]
    per_part = res.group_by("run_id", "part_seq").agg(
        pl.len().alias("n"), (~pl.col("passed")).any().alias("any_fail")
    )
    joined = die.join(per_part, on=["run_id", "part_seq"], how="left")
    assert joined.get_column("n").null_count() == 0
    assert (joined.get_column("n") == joined.get_column("num_tests").cast(pl.UInt32)).all()
    assert (joined.get_column("any_fail") == ~joined.get_column("passed")).all()
    assert (res.get_column("passed") == ((res.get_column("test_flags") & 0x80) == 0)).all()
    # functional results have no value; parametric ones do
    kinds = res.group_by("kind").agg(pl.col("value").null_count(), pl.len())
    kinds = {k: (nulls, n) for k, nulls, n in kinds.iter_rows()}
    assert kinds["F"][0] == kinds["F"][1] and kinds["P"][0] == 0
    counted = res.group_by("run_id", "test_num").agg(
        pl.len().alias("exec"), (~pl.col("passed")).sum().alias("fail")
    )
    tj = tests.join(counted, on=["run_id", "test_num"])
    assert tj.height == tests.height
    assert (tj.get_column("exec_count") == tj.get_column("exec")).all()
    assert (tj.get_column("fail_count") == tj.get_column("fail")).all()
    for kind, col in (("H", "hbin"), ("S", "sbin")):
        want = die.group_by("run_id", col).len().rename({col: "bin", "len": "want"})
        got = bins.filter((pl.col("kind") == kind) & (pl.col("site") == 255))
        m = got.join(
            want.with_columns(pl.col("bin").cast(pl.Int32)), on=["run_id", "bin"], how="full"
        )
        assert (m.get_column("count") == m.get_column("want").cast(pl.Int64)).all()
        per_site = bins.filter((pl.col("kind") == kind) & (pl.col("site") != 255))
        assert per_site.get_column("count").sum() == die.height
    names = bins.filter(pl.col("kind") == "H").select("bin", "name", "pass_fail").unique()
    assert set(names.filter(pl.col("pass_fail") == "P").get_column("bin")) == {1}


def test_truth_die_matches_the_die_table(t):
    truth, ws = t["truth_die"], t["ws"]
    first = ws.filter(pl.col("retest_index") == 0)
    final = ws.filter(pl.col("final"))
    m = truth.join(first.select(*KEY, "passed", "sbin"), on=KEY).join(
        final.select(*KEY, pl.col("passed").alias("final_passed")), on=KEY
    )
    assert m.height == truth.height == first.height
    assert (m.get_column("first_pass") == m.get_column("passed")).all()
    assert (m.get_column("final_pass") == m.get_column("final_passed")).all()
    contact = m.filter(pl.col("cause") == "contact")
    assert contact.height > 0 and contact.get_column("sbin").is_in([10, 11]).all()
    assert (m.filter(pl.col("cause") == "pass").get_column("sbin") == 1).all()
    assert (
        m.filter(pl.col("cause").is_in(["pattern", "random", "reticle", "parametric"]))
        .get_column("passed")
        .not_()
        .all()
    )
    retested = (
        ws.filter(pl.col("retest_index") == 1).select(*KEY).with_columns(pl.lit(True).alias("r"))
    )
    r = truth.join(retested, on=KEY, how="left")
    assert (r.get_column("retested") == r.get_column("r").fill_null(False)).all()


def _fail_geometry(t, pattern: str):
    layout = t["layout"]
    truth = t["truth_die"].join(
        t["truth_wafers"].select("lot_id", "wafer_id", "pattern"), on=["lot_id", "wafer_id"]
    )
    w = truth.filter(pl.col("pattern") == pattern)
    assert w.height > 0, pattern
    fails = w.filter(pl.col("cause") == "pattern")
    cx, cy = layout.to_canonical(fails.get_column("x").to_numpy(), fails.get_column("y").to_numpy())
    u, v = layout.normalized(cx, cy)
    ring = layout.ring_index(cx, cy)
    return ring.mean(), np.hypot(u, v).mean()


def test_spatial_signatures_put_fails_where_the_truth_says(t):
    layout = t["layout"]
    x, y = layout.gross_die()
    all_ring = layout.ring_index(x, y).mean()
    ring_edge, _ = _fail_geometry(t, "Edge-Ring")
    ring_eloc, _ = _fail_geometry(t, "Edge-Loc")
    _, rho_center = _fail_geometry(t, "Center")
    ring_random, _ = _fail_geometry(t, "Random")
    # stated measures: mean ring index of Edge-Ring fails < 2.5 (wafer mean ~6.7); mean radius of
    # Center fails < 0.45 of the wafer radius (wafer mean ~0.63)
    assert ring_edge < 2.5 < all_ring
    assert ring_eloc < 0.6 * all_ring
    assert rho_center < 0.45
    assert abs(ring_random - all_ring) < 1.0
    none = (
        t["truth_die"]
        .join(t["truth_wafers"], on=["lot_id", "wafer_id"])
        .filter(pl.col("pattern") == "none")
    )
    assert not (none.get_column("cause") == "pattern").any()
    assert (none.get_column("cause") == "random").sum() > 0
    # stored parameters redraw the planted probability map
    from backend_fab.synth.patterns import draw_signature

    tw = t["truth_wafers"].filter(pl.col("pattern") == "Center").row(0, named=True)
    params = json.loads(tw["params"])
    u, v = layout.normalized(x, y)
    p, used = draw_signature("Center", u, v, 0, **params)
    assert used == params
    fails = t["truth_die"].filter(
        (pl.col("lot_id") == tw["lot_id"]) & (pl.col("wafer_id") == tw["wafer_id"])
    )
    cx, cy = layout.to_canonical(fails.get_column("x").to_numpy(), fails.get_column("y").to_numpy())
    order = np.lexsort((cx, cy))  # the probability map is in gross_die order (y, then x)
    failed = (fails.get_column("cause") == "pattern").to_numpy()[order]
    assert p[failed].mean() > 3 * p[~failed].mean()


def test_bad_site_and_reticle_repeat_are_in_the_data(t):
    lots = t["truth_lots"]
    bad = lots.filter(pl.col("bad_site").is_not_null()).row(0, named=True)
    first = t["ws"].filter((pl.col("lot_id") == bad["lot_id"]) & (pl.col("retest_index") == 0))
    rate = first.group_by("site").agg(pl.col("sbin").is_in([10, 11]).mean().alias("r"))
    rate = dict(rate.iter_rows())
    others = [r for s, r in rate.items() if s != bad["bad_site"]]
    assert rate[bad["bad_site"]] > 5 * max(others)

    ret = lots.filter(pl.col("reticle_repeat").is_not_null()).row(0, named=True)
    positions = {tuple(p) for p in json.loads(ret["reticle_repeat"])["positions"]}
    layout = t["layout"]
    truth = t["truth_die"].filter(pl.col("lot_id") == ret["lot_id"])
    rx, ry = layout.reticle_xy(*layout.to_canonical(truth["x"].to_numpy(), truth["y"].to_numpy()))
    at = np.array([(a, b) in positions for a, b in zip(rx.tolist(), ry.tolist(), strict=True)])
    reticle = (truth.get_column("cause") == "reticle").to_numpy()
    assert reticle.sum() > 20 and at[reticle].all()
    failed = ~truth.get_column("first_pass").to_numpy()
    assert failed[at].mean() > failed[~at].mean() + 0.25  # planted density >= 0.3


def test_planted_outliers_are_where_the_truth_says_and_beyond_the_stated_sigma(t):
    out, res, ws = t["truth_outliers"], t["results"], t["ws"]
    assert out.height >= 20
    assert out.get_column("sigma").abs().min() >= 6.0
    assert out.get_column("sigma").abs().max() <= 10.0
    final = ws.filter(pl.col("final")).select("run_id", "part_seq", *KEY, "passed")
    m = out.join(final, on=KEY).join(
        res.select("run_id", "part_seq", "test_num", pl.col("value").alias("measured")),
        on=["run_id", "part_seq", "test_num"],
    )
    assert m.height == out.height
    assert m.get_column("passed").all()  # outliers sit on good die, inside the limits
    assert (m.get_column("measured") == m.get_column("value")).all()
    from backend_fab.synth.catalog import TEST_CATALOG

    sig = {tdef.test_num: tdef.sigma for tdef in TEST_CATALOG}
    z = (m["value"] - m["expected"]) / m["test_num"].replace_strict(sig, return_dtype=pl.Float64)
    np.testing.assert_allclose(z.to_numpy(), m["sigma"].to_numpy(), rtol=1e-9)
    # the robust wafer z stated in the truth is what the data gives
    good = final.filter(pl.col("passed")).join(
        res.select("run_id", "part_seq", "test_num", "value"), on=["run_id", "part_seq"]
    )
    stats = good.group_by("run_id", "wafer_id", "test_num").agg(
        pl.col("value").median().alias("med"),
        (
            (pl.col("value").quantile(0.75, "linear") - pl.col("value").quantile(0.25, "linear"))
            / 1.349
        ).alias("rs"),
    )
    mz = m.join(stats, on=["run_id", "wafer_id", "test_num"]).with_columns(
        ((pl.col("value") - pl.col("med")) / pl.col("rs")).alias("z")
    )
    np.testing.assert_allclose(mz["z"].to_numpy(), mz["sigma_wafer"].to_numpy(), rtol=1e-6)
    assert (mz.get_column("z").abs() > 4.0).mean() > 0.8


def test_latent_fail_rate_rises_with_failing_neighbours(t):
    truth = t["truth_die"].filter(pl.col("final_pass"))
    b = truth.with_columns(
        pl.when(pl.col("n_fail_neighbors") == 0)
        .then(0)
        .when(pl.col("n_fail_neighbors") <= 2)
        .then(1)
        .otherwise(2)
        .alias("bucket")
    )
    rates = (
        b.group_by("bucket")
        .agg(pl.col("latent_fail").mean(), pl.col("latent_risk").mean())
        .sort("bucket")
    )
    fail = rates.get_column("latent_fail").to_numpy()
    risk = rates.get_column("latent_risk").to_numpy()
    assert np.all(np.diff(risk) > 0) and np.all(np.diff(fail) > 0)
    assert fail[2] > 5 * fail[0]
    assert not t["truth_die"].filter(~pl.col("final_pass")).get_column("latent_fail").any()


def test_neighbour_counts_are_recomputed_from_the_final_map(t):
    layout = t["layout"]
    final = t["ws"].filter(pl.col("final"))
    real_fail = final.filter(~pl.col("passed") & ~pl.col("sbin").is_in([10, 11]))
    bad = {(lot, w, x, y) for lot, w, x, y in real_fail.select(*KEY).iter_rows()}
    sample = t["truth_die"].filter(pl.col("n_fail_neighbors") > 0).head(300)
    sample = pl.concat([sample, t["truth_die"].filter(pl.col("n_fail_neighbors") == 0).head(300)])
    sx = 1 if layout.pos_x == "R" else -1
    sy = 1 if layout.pos_y == "U" else -1
    for lot, w, x, y, n in sample.select(*KEY, "n_fail_neighbors").iter_rows():
        count = sum(
            (lot, w, x + sx * a, y + sy * b) in bad
            for a in (-1, 0, 1)
            for b in (-1, 0, 1)
            if (a, b) != (0, 0)
        )
        assert count == n


def test_genealogy_traces_every_unit_to_exactly_one_good_die(t):
    g, units, ws = t["genealogy"], t["units"], t["ws"]
    edges = g.filter(pl.col("relation") == "transfer")
    assert edges.get_column("unit_id").is_unique().all()
    assert edges.select(*[f"from_{c}" for c in ("lot_id", "wafer_id", "x", "y")]).is_unique().all()
    per_unit = units.join(edges.select("unit_id", "from_lot_id"), on="unit_id", how="left")
    assert per_unit.get_column("from_lot_id").null_count() == 0
    good = ws.filter(pl.col("final") & pl.col("passed")).select(
        *[pl.col(c).alias(f"from_{c}") for c in KEY]
    )
    src = edges.join(good, on=[f"from_{c}" for c in KEY], how="anti")
    assert src.height == 0  # every edge starts at a final-good wafer-sort die
    # ECIDs read at final test decode to the traced die
    e = units.filter(pl.col("ecid").is_not_null()).join(edges, on="unit_id")
    for ecid, lot, w, x, y in e.select("ecid", *[f"from_{c}" for c in KEY]).head(500).iter_rows():
        assert decode_ecid(ecid) == (lot, w, x, y)
    assert units.get_column("ecid").null_count() > 0  # some ECIDs are unreadable
    # merges and splits both occur; wafer-level quantities add up
    wl = g.filter(pl.col("relation") != "transfer")
    assert set(wl.get_column("relation")) == {"merge", "split"}
    steps = t["assembly_steps"]
    saw_in = (
        steps.filter(pl.col("step") == "SAW")
        .group_by("assembly_lot_id")
        .agg(pl.col("qty_in").first())
    )
    qty = wl.group_by("assembly_lot_id").agg(pl.col("qty").sum())
    assert dict(saw_in.iter_rows()) == dict(qty.iter_rows())
    assert g.filter(pl.col("relation") == "split").get_column("from_wafer_id").len() >= 2


def test_assembly_quantities_flow_and_final_test_sees_the_survivors(t):
    steps = t["assembly_steps"]
    per_step = (
        steps.group_by("assembly_lot_id", "step_seq")
        .agg(pl.col("qty_in").first(), pl.col("qty_out").first(), pl.col("reject_qty").sum())
        .sort("assembly_lot_id", "step_seq")
    )
    assert (per_step["qty_in"] - per_step["qty_out"] == per_step["reject_qty"]).all()
    for _, part in per_step.group_by("assembly_lot_id"):
        part = part.sort("step_seq")
        assert (part["qty_out"][:-1] == part["qty_in"][1:]).all()
    last = per_step.group_by("assembly_lot_id").agg(pl.col("qty_out").last())
    ft1 = t["units"].filter(pl.col("insertion") == "FT1").group_by("assembly_lot_id").len()
    m = last.join(ft1, on="assembly_lot_id")
    assert (m.get_column("qty_out") == m.get_column("len").cast(pl.Int64)).all()
    # PBI tests exactly the FT1-good units
    ft1_good = set(t["units"].filter((pl.col("insertion") == "FT1") & pl.col("passed"))["unit_id"])
    pbi = set(t["units"].filter(pl.col("insertion") == "PBI")["unit_id"])
    assert pbi == ft1_good
    assert set(steps.get_column("equipment").str.slice(0, 2)) >= {"SA", "DA", "WB", "MP"}


def test_final_test_fails_follow_the_planted_causes(t):
    tu, units = t["truth_units"], t["units"]
    ft1 = units.filter(pl.col("insertion") == "FT1").join(
        tu.select("unit_id", "ft1_cause", "latent_fail", "latent_insertion", "assembly_defect"),
        on="unit_id",
    )
    # a unit fails FT1 exactly when the truth gives it a cause
    assert (ft1.get_column("passed") == ft1.get_column("ft1_cause").is_null()).all()
    lat = ft1.filter(pl.col("latent_fail") & (pl.col("latent_insertion") == "FT1"))
    assert lat.height > 0 and not lat.get_column("passed").any()
    asm = ft1.filter(pl.col("assembly_defect"))
    assert asm.height > 0 and asm.get_column("sbin").is_in([100, 101]).all()
    pbi = units.filter(pl.col("insertion") == "PBI").join(tu, on="unit_id")
    late = pbi.filter(pl.col("latent_fail") & (pl.col("latent_insertion") == "PBI"))
    assert late.height > 0 and not late.get_column("passed").any()
    healthy = pbi.filter(~pl.col("latent_fail"))
    assert healthy.get_column("passed").mean() > 0.99


def test_ecid_format_round_trips():
    ecid = encode_ecid("AXL0001", "07", -12, 5)
    assert ecid == "AXL0001:07:-12:5"
    assert decode_ecid(ecid) == ("AXL0001", "07", -12, 5)
    for bad in ("AXL0001:07:-12", "AXL0001:07:a:5", ":07:1:2"):
        with pytest.raises(ValueError, match="ECID"):
            decode_ecid(bad)
