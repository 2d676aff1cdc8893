"""Scenario files: packaged copies, validation with errors that name the key, edge-case configs."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from backend_fab import schema
from backend_fab.errors import ScenarioError
from backend_fab.synth import generate_fab, load_scenario, scenario_names
from backend_fab.synth.scenarios import scenario_path

DATASETS = Path(__file__).resolve().parents[1] / "datasets"


def test_packaged_scenarios_are_the_dataset_files():
    assert scenario_names() == ["bench-day", "ci", "demo"]
    for name in scenario_names():
        assert scenario_path(name).read_bytes() == (DATASETS / f"{name}.toml").read_bytes(), name
    readme = (DATASETS / "README.md").read_text()
    for name in scenario_names():
        assert f"## `{name}`" in readme  # each scenario has its dataset card


def test_scenario_sizes_match_their_cards():
    ci = load_scenario("ci")
    assert len(ci.products) == 1 and ci.products[0].lots == 2
    assert 20_000 <= ci.n_die_planned <= 25_000
    day = load_scenario("bench-day")
    assert sum(p.lots for p in day.products) == 20
    assert all(p.wafers_per_lot == 25 and p.n_tests == 20 for p in day.products)
    from backend_fab.synth.tester import product_layout

    assert all(5_000 <= product_layout(p).n_gross <= 10_000 for p in day.products)
    demo = load_scenario("demo")
    assert {p.wafer_size_mm for p in demo.products} == {150.0, 200.0, 300.0}
    assert max(p.lots for p in demo.products) >= 6  # enough lots for SYL/SBL (AEC-Q002)


def test_load_from_path_dict_and_seed_override(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_bytes(scenario_path("ci").read_bytes())
    by_path = load_scenario(path)
    assert by_path.products == load_scenario("ci").products
    assert by_path.with_seed(5).seed == 5 and by_path.with_seed(None) is by_path
    assert by_path.with_seed(5).config_hash != by_path.config_hash
    assert by_path.config_hash == load_scenario("ci").config_hash  # the source path is not hashed


def _minimal(**product):
    base = {"name": "P1", "wafer_size_mm": 150.0, "die_width_mm": 6.0, "die_height_mm": 6.0}
    base.update(product)
    return {"name": "t", "seed": 1, "products": [base]}


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"name": "t"}, "products"),
        ({"products": [{}]}, "name"),
        ({**_minimal(), "colour": 1}, "colour"),
        (_minimal(n_sites=3), r"products\[0\]\.n_sites"),
        (_minimal(n_tests=40), r"n_tests"),
        (_minimal(wafers_per_lot=26), "wafers_per_lot"),
        (_minimal(contact_rate=1.5), "contact_rate"),
        (_minimal(pattern_mix={"edge-ring": 1.0}), "edge-ring"),
        (_minimal(pattern_cycle=["Donut", "Ring"]), "pattern_cycle"),
        (_minimal(bad_site_lots=[0]), "bad_site_lots"),
        (_minimal(lot_prefix="A:B"), "lot_prefix"),
        (_minimal(die_width_mm=200.0), "no die fits"),
        (_minimal(n_sites="4"), "integer"),
        (_minimal(wafer_size_mm="big"), "number"),
        ({**_minimal(), "seed": -1}, "seed"),
        ({**_minimal(), "start": "yesterday"}, "start"),
    ],
)
def test_invalid_scenarios_name_the_key(raw, match):
    with pytest.raises(ScenarioError, match=match):
        load_scenario(raw)


def test_unknown_names_and_broken_files(tmp_path):
    with pytest.raises(ScenarioError, match=r"unknown scenario 'nope'.*ci"):
        load_scenario("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match="does not exist"):
        load_scenario(tmp_path / "absent.toml")


def test_edge_case_product_generates_valid_tables():
    """One site, the minimum program (no DC/AC test: no outliers, no dc defects), one wafer per
    lot, no burn-in, a big assembly lot: every table still conforms."""
    raw = _minimal(
        n_sites=1,
        n_tests=3,
        lots=2,
        wafers_per_lot=1,
        burn_in=False,
        assembly_lot_size=100_000,
        pattern_cycle=["Near-full", "Scratch"],
        pos_x="L",
        pos_y="D",
        notch="L",
        center_y=0.5,
    )
    fab = generate_fab(raw)
    insertions = [run["runs"].item(0, "insertion") for run in fab.runs]
    assert insertions == ["WS1", "WS1", "ASSEMBLY", "FT1"]
    for run in fab.runs:
        for name, frame in run.items():
            schema.validate(name, frame)
    assert fab.table("truth_outliers").height == 0
    ws = fab.table("die").filter(pl.col("x").is_not_null())
    assert set(ws.get_column("sbin")) <= {1, 10, 11, 20, 21, 30, 31}  # no DC/AC test bins
    # data coordinates follow pos_x = L / pos_y = D: the canonical frame is mirrored
    layout = fab.layouts["P1"]
    cx, cy = layout.to_canonical(ws["x"].to_numpy(), ws["y"].to_numpy())
    assert layout.is_gross(cx, cy).all()
    assert fab.table("truth_wafers").get_column("pattern").to_list() == ["Near-full", "Scratch"]
