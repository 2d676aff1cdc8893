"""``backend-fab synth``: write a synthetic fab to disk.

``OUT/`` receives:

* ``lake/`` — a lake with every run (canonical tables and ground truth) and the ``layouts``;
* ``stdf/<lot>_<insertion>.stdf[.gz]`` (with ``--stdf``) — each tester run (WS1, FT1, PBI) as the
  STDF file a tester would have written: every third file gzip-compressed and every other file
  big-endian (both occur in real data), chosen by the run's position so the set is deterministic;
* ``assembly/<assembly_lot>_steps.csv``, ``_genealogy.csv`` and ``_<insertion>_units.csv`` (with
  ``--stdf``) — the assembly MES and final-test unit records that are not in STDF, in the CSV
  layout ``backend-fab ingest`` reads (:mod:`backend_fab.assembly`);
* ``truth/<table>.parquet`` — the ground-truth tables, for readers without a lake.

``backend-fab ingest OUT/stdf OUT/assembly`` then rebuilds the canonical tables from the files.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import polars as pl

__all__ = ["synth_command"]

_TESTER_INSERTIONS = ("WS1", "FT1", "PBI")
_TRUTH = (
    "truth_lots",
    "truth_wafers",
    "truth_die",
    "truth_outliers",
    "truth_units",
    "truth_assembly",
)


def _stdf_name(lot: str, insertion: str, ordinal: int) -> tuple[str, str]:
    """(file name, byte order) of the ``ordinal``-th tester run."""
    suffix = ".stdf.gz" if ordinal % 3 == 2 else ".stdf"
    return f"{lot}_{insertion}{suffix}", (">" if ordinal % 2 == 1 else "<")


def _write_csv(frame: pl.DataFrame, path: Path) -> None:
    frame.drop("run_id").write_csv(path, datetime_format="%Y-%m-%dT%H:%M:%S%.6fZ")


def synth_command(
    scenario: str = "ci",
    out: Path = Path("synth-out"),
    seed: int | None = None,
    stdf: bool = True,
    quiet: bool = False,
    workers: int | None = None,
) -> int:
    """Generate ``scenario`` into ``out`` (lake, STDF and assembly files, truth). Returns 0.

    ``workers``: generator threads (:meth:`SynthFab.iter_runs`; the output does not depend on it).
    Raises :class:`~backend_fab.errors.ScenarioError` for an unknown or invalid scenario (the
    CLI turns it into exit code 2).
    """
    from backend_fab.lake import Lake
    from backend_fab.synth.generator import generate_fab

    t0 = time.perf_counter()
    fab = generate_fab(scenario, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lake = Lake(out / "lake")
    lake.merge("layouts", fab.layouts_frame())
    stdf_dir, asm_dir, truth_dir = out / "stdf", out / "assembly", out / "truth"
    if stdf:
        stdf_dir.mkdir(exist_ok=True)
        asm_dir.mkdir(exist_ok=True)
        from backend_fab.io.stdf_write import write_stdf
    truth_dir.mkdir(exist_ok=True)

    show = not quiet and sys.stdout.isatty()
    total = fab.scenario.n_die_planned
    counts = {"runs": 0, "added": 0, "ws_die": 0, "results": 0, "units": 0, "stdf": 0}
    stdf_bytes = 0
    truth_parts: dict[str, list[pl.DataFrame]] = {name: [] for name in _TRUTH}
    layouts = fab.layouts_frame()

    progress = None
    if show:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(
            TextColumn("[bold]synth[/] {task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f} die"),
            TimeRemainingColumn(),
        )
        progress.start()
        task = progress.add_task(fab.scenario.name, total=total)
    try:
        for run in fab.iter_runs(workers=workers):
            row = run["runs"].row(0, named=True)
            insertion, lot = row["insertion"], row["lot_id"]
            res = lake.add_run(run)
            counts["runs"] += 1
            counts["added"] += int(res.added)
            counts["results"] += run["results"].height if "results" in run else 0
            counts["units"] += run["units"].height if "units" in run else 0
            for name in _TRUTH:
                if name in run:
                    truth_parts[name].append(run[name])
            if stdf and insertion in _TESTER_INSERTIONS:
                name, order = _stdf_name(lot, insertion, counts["stdf"])
                data = {**run, "layouts": layouts}
                stdf_bytes += write_stdf(data, stdf_dir / name, byte_order=order)
                counts["stdf"] += 1
            if stdf and insertion == "ASSEMBLY":
                _write_csv(run["assembly_steps"], asm_dir / f"{lot}_steps.csv")
                _write_csv(run["genealogy"], asm_dir / f"{lot}_genealogy.csv")
            if stdf and "units" in run:
                _write_csv(run["units"], asm_dir / f"{lot}_{insertion}_units.csv")
            if insertion == "WS1":
                counts["ws_die"] += run["die"].height
                if progress is not None:
                    progress.update(task, advance=run["truth_die"].height)
    finally:
        if progress is not None:
            progress.stop()
    for name, parts in truth_parts.items():
        if parts:
            pl.concat(parts).drop("run_id").write_parquet(truth_dir / f"{name}.parquet")
    elapsed = time.perf_counter() - t0
    if not quiet:
        s = fab.scenario
        print(
            f"synth {s.name} (seed {fab.seed}): {len(s.products)} product(s), "
            f"{sum(p.lots for p in s.products)} lot(s), {counts['ws_die']:,} wafer-sort die rows, "
            f"{counts['results']:,} results, {counts['units']:,} final-test unit rows"
        )
        print(
            f"  lake {out / 'lake'}: {counts['added']} of {counts['runs']} run(s) added "
            f"({counts['runs'] - counts['added']} already there)"
        )
        if stdf:
            print(
                f"  stdf {stdf_dir}: {counts['stdf']} file(s), {stdf_bytes / 1e6:,.1f} MB "
                f"uncompressed; assembly records in {asm_dir}"
            )
        print(f"  truth {truth_dir}; {elapsed:.1f} s")
    return 0
