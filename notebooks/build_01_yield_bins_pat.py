"""Write notebooks/01-yield-bins-pat.ipynb (outputs cleared) from the cells below.

Run from the repository root: ``.venv/bin/python notebooks/build_01_yield_bins_pat.py``.
``tests/test_notebook_01.py`` checks that the committed notebook is what this script writes and
executes it top to bottom on the synthetic ``ci`` scenario.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
TARGET = HERE / "01-yield-bins-pat.ipynb"

CELLS = [
    (
        "md",
        """# Yield, bins, SYL/SBL and PAT on a lake

A worked session of an automotive yield engineer on one lake: yield and retests, bin Paretos,
wafer maps, stacked maps with significant hot spots, site-to-site comparison, trend charts,
statistical yield and bin limits (AEC-Q002), static and dynamic PAT limits (AEC-Q001) and the PAT
engine with its dispositions.

The lake comes from `BACKEND_FAB_LAKE`; without it the synthetic `ci` scenario is generated into
a temporary lake (a few seconds).""",
    ),
    (
        "code",
        """%matplotlib inline
import os
import tempfile
from pathlib import Path

import polars as pl

import backend_fab as bf
import backend_fab.frame  # registers the `fab` namespace on polars frames
from backend_fab import bins, limits, plot
from backend_fab.lake import Lake

pl.Config.set_tbl_rows(12)
pl.Config.set_tbl_cols(14)

lake_path = os.environ.get("BACKEND_FAB_LAKE")
if lake_path is None:
    lake_path = Path(tempfile.mkdtemp(prefix="fab-")) / "lake"
    bf.generate_fab("ci").write_lake(Lake(lake_path))
lake = Lake(lake_path)
lake""",
    ),
    ("md", "## Load\n\nWafer-sort runs only (the lake also holds assembly and final test)."),
    (
        "code",
        """runs = lake.scan("runs")
ws_runs = runs.filter(pl.col("insertion").str.starts_with("WS")).collect()
die = lake.scan("die").filter(pl.col("run_id").is_in(ws_runs["run_id"].to_list()))
layouts = lake.scan("layouts").collect()
bin_table = lake.scan("bins")
results = lake.scan("results")
ws_runs.select("lot_id", "insertion", "tester", "start_time", "n_parts")""",
    ),
    ("md", "## Yield: first pass, final, retest and recovery"),
    (
        "code",
        """lot_yield = bins.yield_summary(die, level="lot", layouts=layouts.lazy()).collect()
lot_yield.select(
    "lot_id", "n_tested", "yield_first_pass", "yield_final", "yield_lift", "retest_rate",
    "recovery_rate", "n_wafers", "mean_wafer_yield", "yield_gross",
)""",
    ),
    (
        "code",
        """wafer_yield = die.fab.yield_summary(level="wafer").collect()
wafer_yield.select("lot_id", "wafer_id", "n_tested", "yield_first_pass", "yield_final")""",
    ),
    (
        "code",
        """# per first-pass bin: how many were retested and how many recovered (contact vs real defect)
bins.retest_recovery(die, kind="sbin").collect().head(8)""",
    ),
    ("md", "## Bin Pareto (first pass, soft bins, names from the HBR/SBR records)"),
    (
        "code",
        """pareto = bins.bin_pareto(die, kind="sbin", which="first", bins=bin_table).collect()
lot1 = pareto["lot_id"].unique().sort()[0]
plot.pareto_figure(pareto.filter(pl.col("lot_id") == lot1), title=f"{lot1}: first-pass soft bins")""",
    ),
    ("md", "## Wafer maps"),
    (
        "code",
        """lot2 = pareto["lot_id"].unique().sort()[-1]
plot.lot_gallery(die, lot_id=lot2, layout=layouts)""",
    ),
    (
        "code",
        """plot.wafer_map(die, lot_id=lot1, wafer_id="01", layout=layouts, color_by="value",
               results=results, test_num=3000)""",
    ),
    (
        "md",
        """## Stacked map with a significance layer

Per location, P(X >= fails) under each wafer's own fail rate (Poisson-binomial); hot spots are
the locations that survive Benjamini-Hochberg at 5 %.""",
    ),
    (
        "code",
        """stack = bins.stacked_map(die.filter(pl.col("lot_id") == lot2), which="first", null="wafer")
hot = bins.stacked_hot_spots(die.filter(pl.col("lot_id") == lot2), which="first")
print(f"{hot.height} significant locations in {lot2}")
plot.stacked_map_figure(stack, layout=layouts)""",
    ),
    (
        "md",
        """## Site-to-site

Probe sites see different wafer regions, so the raw chi-square can blame a site for an edge or
reticle pattern. The CMH test stratified by wafer, ring and reticle position removes that;
contact problems show in first-pass results (retests recover them).""",
    ),
    (
        "code",
        """sites = bins.site_comparison(die, which="first", layouts=layouts, strata="wafer_ring_reticle")
sites.sites.select("lot_id", "site", "yield", "delta", "p_adj", "delta_adjusted", "p_cmh_adj",
                   "flagged", "confounded")""",
    ),
    ("code", """plot.site_figure(sites, group={"lot_id": lot1})"""),
    (
        "md",
        """## SYL / SBL (AEC-Q002) and the yield trend

Limits need at least six lots of history; this small lake has two, so the demo computes them per
wafer with a lowered minimum. Limit sets are versioned rows of the lake's `limits` table.""",
    ),
    (
        "code",
        """syl = limits.syl_sbl_limits(die, runs=runs, level="wafer", min_lots=2, min_points=8,
                             method="robust", kind="hbin")
saved = limits.save_limits(lake, syl)
saved.select("limit_type", "key", "method", "version", "level1_lo", "level2_lo", "level1_hi",
             "level2_hi")""",
    ),
    (
        "code",
        """evaluation = limits.evaluate_limits(die, limits.load_limits(lake))
limits.limit_levels(evaluation)""",
    ),
    (
        "code",
        """trend = bins.yield_trend(die, runs, level="wafer").collect()
plot.trend_figure(trend, label_by="wafer_id", limits=saved)""",
    ),
    (
        "md",
        """## PAT

Static PAT limits come from history (median ± 6 robust σ; AEC-Q001 asks for six lots: lowered
here), then the default recipe runs SPAT, DPAT per wafer, NNR, IDDQ-delta, GDBN, cluster,
reticle and Z-PAT. Every reason of every die is kept; one bin per die by precedence.""",
    ),
    (
        "code",
        """spat = limits.static_pat_limits(results, die, tests=lake.scan("tests"), min_lots=2)
limits.save_limits(lake, spat)
recipe = bf.pat.load_recipe()
result = bf.run_pat(lake, recipe)
print(result, result.recipe_hash[:12])
result.summary().select("lot_id", "n_tested", "yield_before", "yield_after", "pat_loss",
                        "alarm_level")""",
    ),
    (
        "code",
        """result.yield_loss.filter(pl.col("wafer_id") == "").select(
    "lot_id", "rule", "bin", "n_flagged", "n_binned", "loss")""",
    ),
    (
        "code",
        """result.dispositions.filter(pl.col("final_rule")).select(
    "lot_id", "wafer_id", "x", "y", "rule", "reason_bits", "original_hbin", "new_bin",
    "test_num", "value", "lo_limit", "hi_limit").head(10)""",
    ),
    (
        "code",
        """plot.wafer_map(die, lot_id=lot2, wafer_id="02", layout=layouts, color_by="disposition",
               dispositions=result.dispositions)""",
    ),
    ("code", """plot.pat_histogram(result, results, test_num=3001, lot_id=lot2, wafer_id="01")"""),
    (
        "code",
        """# the batch keeps dispositions per (lot, recipe hash) and raises the PAT yield-loss alarm
result.write(lake)
result.alarms().select("lot_id", "rule", "level", "evidence")""",
    ),
]


def build() -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {
        "display_name": "Python 3",
        "language": "python",
        "name": "python3",
    }
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, src) in enumerate(CELLS):
        cell = new_markdown_cell(src) if kind == "md" else new_code_cell(src)
        cell["id"] = f"cell-{i:02d}"
        nb.cells.append(cell)
    return nb


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0]) if args else TARGET
    nbformat.write(build(), target)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
