"""Benchmark of map files and genealogy: E142/G85 read and write, tracing, GDBN neighbour weights.

Run: ``.venv/bin/python benchmarks/bench_genealogy.py [--smoke] [--json PATH]``

Measured in one run, median of ``--repeat`` runs (3; 1 with ``--smoke``):

- **wafer maps**: ``write_e142`` / ``read_e142`` (with the safe parser and every check) and
  ``write_g85`` / ``read_g85`` of a lot of 300 mm wafers (3 mm die, ~6,900 die each; 25 wafers,
  2 with ``--smoke``), in MB/s and die/s; anchor: the ``g85`` package (pure Python, GPL, used
  only as an installed oracle) reading and writing the same maps;
- **trace**: :func:`backend_fab.genealogy.trace` of units through transfer edges and ECIDs
  (200,000 units; 2,000 with ``--smoke``) against a naive dictionary look-up in Python (the
  obvious baseline), in units/s;
- **GDBN weights**: :func:`backend_fab.genealogy.neighbourhood_scores` (polars joins) against a
  naive per-die Python loop, in die/s, on the same wafers;
- **strip maps**: :func:`genealogy_to_e142` + write + read + :func:`edges_from_e142` of one
  assembly lot (4,000 units on 4 x 16 strips; 256 with ``--smoke``), in units/s.

Nothing here is compiled with numba, so there is no compile time to report; each figure follows
one untimed warm-up call. Data are generated in-process with a fixed seed; no file is kept.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from backend_fab import genealogy as G
from backend_fab.io.maps import (
    BinDefinition,
    E142Document,
    G85Map,
    read_e142,
    read_g85,
    write_e142,
    write_g85,
)
from backend_fab.layout import Layout
from backend_fab.machine import describe


def machine() -> str:
    return describe(("polars",))


def timed(fn, repeat: int) -> tuple[float, object]:
    """Median wall time of ``repeat`` calls after one untimed warm-up call (first-call costs:
    lazy imports, polars plan caches)."""
    out = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def wafer_lot(n_wafers: int, seed: int = 7) -> pl.DataFrame:
    layout = Layout(product="BENCH", wafer_size_mm=300.0, die_width_mm=3.0, die_height_mm=3.0)
    x, y = layout.gross_die()
    rng = np.random.default_rng(seed)
    frames = []
    for w in range(n_wafers):
        bins = np.where(rng.random(x.size) < 0.9, 1, rng.integers(2, 60, x.size))
        frames.append(
            pl.DataFrame(
                {
                    "lot_id": "BLOT",
                    "wafer_id": f"{w + 1:02d}",
                    "substrate_id": f"BLOT.{w + 1:02d}",
                    "x": x,
                    "y": y,
                    "bin": bins.astype(np.int32),
                    "passed": bins == 1,
                }
            )
        )
    return pl.concat(frames)


def bench_maps(die: pl.DataFrame, repeat: int) -> dict:
    import g85

    n_die = die.height
    doc = E142Document.from_die(
        die.select("substrate_id", "lot_id", "x", "y", "bin"),
        bins=[BinDefinition("001", "Pass")],
    )
    t_w142, data142 = timed(lambda: write_e142(doc), repeat)
    t_r142, _ = timed(lambda: read_e142(data142), repeat)
    maps = []
    for sm in doc.substrate_maps:
        rows = sm.overlays[0].bin_code_map.rows
        maps.append(
            G85Map(
                rows=rows,
                bins=[BinDefinition("001", "Pass")],
                map_attrs={"SubstrateType": "Wafer", "SubstrateId": sm.substrate_id},
                device_attrs={"LotId": "BLOT", "OriginLocation": "0"},
            )
        )
    t_w85, data85 = timed(lambda: write_g85(maps), repeat)
    t_r85, _ = timed(lambda: read_g85(data85), repeat)
    t_pr, theirs = timed(lambda: g85.read(io.BytesIO(data85)), repeat)

    def their_write():
        out = io.BytesIO()
        g85.write(theirs, out)
        return out.getvalue()

    t_pw, _ = timed(their_write, repeat)
    mb142, mb85 = len(data142) / 1e6, len(data85) / 1e6
    return {
        "die": n_die,
        "e142_mb": mb142,
        "g85_mb": mb85,
        "e142_write_s": t_w142,
        "e142_read_s": t_r142,
        "g85_write_s": t_w85,
        "g85_read_s": t_r85,
        "g85pkg_read_s": t_pr,
        "g85pkg_write_s": t_pw,
        "e142_read_mb_s": mb142 / t_r142,
        "e142_read_die_s": n_die / t_r142,
        "e142_write_die_s": n_die / t_w142,
        "g85_read_die_s": n_die / t_r85,
        "g85pkg_read_die_s": n_die / t_pr,
        "g85_read_vs_pkg": t_pr / t_r85,
        "g85_write_vs_pkg": t_pw / t_w85,
    }


def units_and_edges(n: int, seed: int = 3) -> tuple[pl.DataFrame, pl.DataFrame]:
    # die are placed wafer by wafer, as assembly picks them: 2,000 die per wafer, 25 per lot
    rng = np.random.default_rng(seed)
    i = np.arange(n)
    lot = i // 50_000
    wafer = (i // 2_000) % 25 + 1
    x = (i % 2_000) % 50 - 25
    y = (i % 2_000) // 50 - 20
    ids = [f"U{i:07d}" for i in range(n)]
    lots = [f"L{v:03d}" for v in lot]
    wafers = [f"{v:02d}" for v in wafer]
    ecid = [
        f"{a}:{b}:{c}:{d}" if i % 3 else None
        for i, (a, b, c, d) in enumerate(zip(lots, wafers, x, y, strict=True))
    ]
    has_edge = np.arange(n) % 3 != 1  # a third of the units trace by ECID only
    units = pl.DataFrame(
        {
            "unit_id": ids,
            "insertion": "FT1",
            "ecid": ecid,
            "strip_id": [f"S{i // 64:05d}" for i in range(n)],
            "row": (np.arange(n) % 64) // 16,
            "col": np.arange(n) % 16,
            "passed": rng.random(n) > 0.01,
        },
        schema_overrides={"row": pl.Int32, "col": pl.Int32},
    )
    edges = pl.DataFrame(
        {
            "relation": "transfer",
            "from_lot_id": lots,
            "from_wafer_id": wafers,
            "from_x": x.astype(np.int32),
            "from_y": y.astype(np.int32),
            "assembly_lot_id": "A1",
            "strip_id": units["strip_id"],
            "row": units["row"],
            "col": units["col"],
            "unit_id": ids,
        }
    ).filter(pl.Series(has_edge))
    return units, edges


def naive_trace(units: pl.DataFrame, edges: pl.DataFrame) -> list:
    by_unit = {
        r[0]: r[1:]
        for r in edges.select(
            "unit_id", "from_lot_id", "from_wafer_id", "from_x", "from_y"
        ).iter_rows()
    }
    out = []
    for unit_id, ecid in units.select("unit_id", "ecid").iter_rows():
        hit = by_unit.get(unit_id)
        if hit is None and ecid is not None:
            lot, wafer, x, y = ecid.split(":")
            hit = (lot, wafer, int(x), int(y))
        out.append(hit)
    return out


def bench_trace(n: int, repeat: int) -> dict:
    units, edges = units_and_edges(n)
    t_fast, fast = timed(lambda: G.trace(units.lazy(), edges.lazy()).collect(), repeat)
    t_naive, slow = timed(lambda: naive_trace(units, edges), repeat)
    got = list(fast.select("lot_id", "wafer_id", "x", "y").iter_rows())
    assert [g if g[0] is not None else None for g in got] == slow, "trace disagrees with naive"
    return {
        "units": n,
        "trace_s": t_fast,
        "naive_s": t_naive,
        "trace_units_s": n / t_fast,
        "speedup": t_naive / t_fast,
    }


def naive_scores(die: pl.DataFrame) -> dict:
    status = {
        (w, x, y): ok for w, x, y, ok in die.select("wafer_id", "x", "y", "passed").iter_rows()
    }
    out = {}
    for (w, x, y), ok in status.items():
        if ok:
            out[(w, x, y)] = sum(
                wt
                for (dx, dy), wt in G.GALAXY_WEIGHTS.items()
                if status.get((w, x + dx, y + dy)) is False
            )
    return out


def bench_scores(die: pl.DataFrame, repeat: int) -> dict:
    lf = die.select("lot_id", "wafer_id", "x", "y", "passed").lazy()
    t_fast, fast = timed(lambda: G.neighbourhood_scores(lf).collect(), repeat)
    t_naive, slow = timed(lambda: naive_scores(die), repeat)
    assert fast.height == len(slow)
    return {
        "die": die.height,
        "scores_s": t_fast,
        "naive_s": t_naive,
        "die_s": die.height / t_fast,
        "speedup": t_naive / t_fast,
    }


def bench_strips(n_units: int, repeat: int) -> dict:
    units, edges = units_and_edges(n_units, seed=5)
    edges = units.select("unit_id", "strip_id", "row", "col").join(
        edges.drop("strip_id", "row", "col"), on="unit_id"
    )
    edges = edges.with_columns(pl.lit("transfer").alias("relation"))

    def run():
        doc = G.genealogy_to_e142(edges, strip_rows=4, strip_cols=16)
        return G.edges_from_e142(read_e142(write_e142(doc)))

    t, out = timed(run, repeat)
    assert out.height == edges.height
    return {"units": edges.height, "seconds": t, "units_s": edges.height / t}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny inputs, one repeat")
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.smoke else 3)
    n_wafers, n_units, n_strip = (1, 2_000, 256) if args.smoke else (25, 200_000, 4_000)

    print(f"machine: {machine()}")
    die = wafer_lot(n_wafers)
    maps = bench_maps(die, repeat)
    print(
        f"wafer maps ({n_wafers} x 300 mm wafers, {maps['die']:,} die; E142 {maps['e142_mb']:.1f} MB, "
        f"G85 {maps['g85_mb']:.1f} MB):\n"
        f"  E142 read  {maps['e142_read_s']:.3f} s  {maps['e142_read_mb_s']:.1f} MB/s  "
        f"{maps['e142_read_die_s']:,.0f} die/s\n"
        f"  E142 write {maps['e142_write_s']:.3f} s  {maps['e142_write_die_s']:,.0f} die/s\n"
        f"  G85  read  {maps['g85_read_s']:.3f} s  {maps['g85_read_die_s']:,.0f} die/s   "
        f"g85 package {maps['g85pkg_read_s']:.3f} s -> ours x{maps['g85_read_vs_pkg']:.2f}\n"
        f"  G85  write {maps['g85_write_s']:.3f} s   g85 package {maps['g85pkg_write_s']:.3f} s -> "
        f"ours x{maps['g85_write_vs_pkg']:.2f}"
    )
    tr = bench_trace(n_units, repeat)
    print(
        f"trace ({tr['units']:,} units, 2/3 by genealogy, 1/3 by ECID): {tr['trace_s']:.3f} s "
        f"({tr['trace_units_s']:,.0f} units/s); naive dict look-up {tr['naive_s']:.3f} s -> x{tr['speedup']:.2f}"
    )
    sc = bench_scores(die, repeat)
    print(
        f"GDBN neighbour weights ({sc['die']:,} die): {sc['scores_s']:.3f} s ({sc['die_s']:,.0f} die/s); "
        f"naive loop {sc['naive_s']:.3f} s -> x{sc['speedup']:.2f}"
    )
    st = bench_strips(n_strip, repeat)
    print(
        f"strip maps ({st['units']:,} units): genealogy -> E142 -> edges {st['seconds']:.3f} s "
        f"({st['units_s']:,.0f} units/s)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": machine(), "maps": maps, "trace": tr, "scores": sc, "strips": st},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
