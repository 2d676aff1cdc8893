"""Die-level genealogy: final-test units back to wafer (lot, wafer, x, y), and screen effectiveness.

Genealogy (DOMAIN §4.2) is many-to-many: fab lots merge into assembly lots, assembly lots split
into sub-lots and final-test lots. The ``genealogy`` table holds two kinds of edges:

* lot edges (``relation`` ``merge`` or ``split``): ``from_lot_id`` -> ``assembly_lot_id`` with the
  quantity moved; :func:`lot_lineage` walks them (any depth, cycles refused);
* die edges (``relation`` ``transfer``, from E142 TransferMaps or a genealogy file): a wafer die
  ``(from_lot_id, from_wafer_id, from_x, from_y)`` placed at a strip position
  ``(assembly_lot_id, strip_id, row, col)`` and/or into a unit ``unit_id``.

:func:`trace` resolves each final-test unit to its die: by its unit id, else by its strip
position, else by decoding its ECID (fab lot, wafer, x, y fused at wafer sort, DOMAIN §4.2), else
by the ``traced_*`` columns the units file already had. Die coordinates are those of the lake's
``die`` table (the sort map's / tester's data coordinates), so traced units join to ``die``,
``dispositions`` and any per-die table directly.

Screen effectiveness (DOMAIN §2.3, §4.5): :func:`screen_effectiveness` joins wafer-sort flags
(PAT ``dispositions``, GDBN flags) to final-test / burn-in outcomes through the trace and counts,
per rule and rule combination, the later fails caught against the good die scrapped (overkill),
with the expectation and a one-sided hypergeometric p-value of scrapping the same number of die
at random; :func:`screen_tradeoff` sweeps a score threshold (e.g. the GDBN neighbour weight of
:func:`neighbourhood_scores`) and gives the trade-off curve beside the random-scrap line.
Pipelines take and return ``pl.LazyFrame``; the reports collect and return ``pl.DataFrame``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from backend_fab import schema
from backend_fab.errors import GenealogyError

__all__ = [
    "DEFAULT_ECID_PATTERN",
    "GALAXY_WEIGHTS",
    "check_genealogy",
    "decode_ecid",
    "edges_from_e142",
    "edges_from_ecid",
    "fails_on_wafer",
    "genealogy_to_e142",
    "lineage_conflicts",
    "lot_lineage",
    "neighbourhood_scores",
    "screen_effectiveness",
    "screen_tradeoff",
    "trace",
    "traced_units",
]

#: ``FABLOT:WAFER:X:Y`` [U: ECID layouts are product-specific; pass your own pattern with the
#: named groups ``lot``, ``wafer``, ``x`` and ``y``].
DEFAULT_ECID_PATTERN = r"^(?P<lot>[^:]+):(?P<wafer>[^:]+):(?P<x>[+-]?\d+):(?P<y>[+-]?\d+)$"

#: Galaxy GDBN weighting (DOMAIN §2.3): adjacent neighbours weigh 2, diagonal neighbours 1.
GALAXY_WEIGHTS: dict[tuple[int, int], float] = {
    (dx, dy): (2.0 if dx == 0 or dy == 0 else 1.0)
    for dx in (-1, 0, 1)
    for dy in (-1, 0, 1)
    if (dx, dy) != (0, 0)
}

_DIE_KEY = ["lot_id", "wafer_id", "x", "y"]


# --- ECID ----------------------------------------------------------------------------------------


def decode_ecid(ecid: pl.Expr | str = "ecid", *, pattern: str = DEFAULT_ECID_PATTERN) -> pl.Expr:
    """A struct expression ``{lot_id, wafer_id, x, y}`` decoded from ECID strings.

    ``pattern`` is a regular expression with the named groups ``lot``, ``wafer``, ``x``, ``y``
    (``x``/``y`` integers); strings that do not match (unreadable ECIDs) give nulls.
    """
    compiled = re.compile(pattern)
    missing = {"lot", "wafer", "x", "y"} - set(compiled.groupindex)
    if missing:
        raise ValueError(f"ECID pattern lacks the named group(s) {sorted(missing)}: {pattern!r}")
    expr = pl.col(ecid) if isinstance(ecid, str) else ecid
    parts = expr.str.extract_groups(pattern)
    return pl.struct(
        parts.struct.field("lot").alias("lot_id"),
        parts.struct.field("wafer").alias("wafer_id"),
        parts.struct.field("x").cast(pl.Int32, strict=False).alias("x"),
        parts.struct.field("y").cast(pl.Int32, strict=False).alias("y"),
    )


# --- building and checking ---------------------------------------------------------------------


def edges_from_e142(doc) -> pl.DataFrame:
    """The ``genealogy`` edges of an :class:`~backend_fab.io.maps.E142Document`'s TransferMaps.

    Source die keep ``FX``/``FY`` as written (the sort map's data coordinates); destinations are
    display cells of the strip maps (row 0 at the top) with the unit id of a DeviceIdMap.
    """
    from backend_fab.io.maps.lake import e142_tables

    tables = e142_tables(doc, name="E142 document")
    if "genealogy" not in tables:
        raise GenealogyError("the E142 document has no TransferMap: no genealogy edges")
    return tables["genealogy"]


def edges_from_ecid(
    units: pl.DataFrame | pl.LazyFrame, *, pattern: str = DEFAULT_ECID_PATTERN
) -> pl.DataFrame:
    """``genealogy`` transfer edges from the ECIDs final test read (one per unit).

    Each unit with a readable ECID gives an edge from the decoded die to the unit (and its
    assembly lot and strip position when the units table has them); ``source`` is ``"ECID"``.
    Raises :class:`GenealogyError` when one unit reads two different ECIDs (at two insertions)
    or two units read the same ECID.
    """
    from backend_fab.io.maps.lake import edge_ids

    lf = units.lazy()
    names = lf.collect_schema().names()
    keep = [c for c in ("assembly_lot_id", "strip_id", "row", "col") if c in names]
    decoded = (
        lf.filter(pl.col("ecid").is_not_null())
        .select("unit_id", decode_ecid("ecid", pattern=pattern).alias("_d"))
        .unnest("_d")
        .filter(pl.col("x").is_not_null())
        .unique()
        .collect()
    )
    for keys, what in (
        (["unit_id"], "reads two different ECIDs"),
        (_DIE_KEY, "is read by two units"),
    ):
        dup = decoded.select(keys).is_duplicated()
        if dup.any():
            row = decoded.filter(dup).row(0, named=True)
            shown = ", ".join(f"{k}={row[k]!r}" for k in keys)
            raise GenealogyError(f"ECID genealogy: {shown} {what}; check the ECID reads")
    if keep:
        where = (
            lf.group_by("unit_id").agg(*[pl.col(c).drop_nulls().first() for c in keep]).collect()
        )
        decoded = decoded.join(where, on="unit_id", how="left", maintain_order="left")
    edges = decoded.sort("unit_id").select(
        pl.lit("transfer").alias("relation"),
        pl.col("lot_id").alias("from_lot_id"),
        pl.col("wafer_id").alias("from_wafer_id"),
        pl.col("x").alias("from_x"),
        pl.col("y").alias("from_y"),
        *[pl.col(c) for c in keep],
        "unit_id",
        pl.lit(1, dtype=pl.Int64).alias("qty"),
        pl.lit("ECID").alias("source"),
        pl.lit("").alias("run_id"),
    )
    return schema.conform("genealogy", edges.with_columns(edge_ids(edges)))


def genealogy_to_e142(
    genealogy: pl.DataFrame | pl.LazyFrame,
    *,
    strip_rows: int,
    strip_cols: int,
    rejected: Sequence[str] = (),
    wafer_die: pl.DataFrame | pl.LazyFrame | None = None,
    wafer_axis_direction: str = "UpRight",
    origin_location: str = "UpperLeft",
    axis_direction: str = "DownRight",
):
    """Strip maps with TransferMaps (SEMI E142) from ``genealogy`` transfer edges.

    One ``Strip`` substrate per ``strip_id`` (``LotId`` = its assembly lot) of ``strip_rows`` x
    ``strip_cols`` positions, in the ``origin_location`` / ``axis_direction`` convention, with
    overlays ``XOut`` (BinCodeMap: ``1`` a unit, ``X`` a unit in ``rejected``, ``.`` empty),
    ``UnitIds`` (DeviceIdMap) and ``TransferMap`` (one TransferMap per source wafer; ``FX``/``FY``
    = the edge's die coordinates). Source wafers are ``Wafer`` substrates named
    ``"<lot>.<wafer>"`` with their ``LotId``. With ``wafer_die`` (``lot_id``, ``wafer_id``, ``x``,
    ``y``, ``hbin``: the sort die of those wafers, data coordinates growing as
    ``wafer_axis_direction``) the document also holds their bin maps, so that reading it checks
    every transfer against a real die. :func:`edges_from_e142` of the result gives the edges back.
    """
    from backend_fab.io.maps import (
        BinCodeMap,
        BinDefinition,
        E142Document,
        Layout,
        Overlay,
        Substrate,
        SubstrateMap,
        TransferMap,
    )
    from backend_fab.io.maps._grid import axis_signs, cell_to_canonical

    t = _transfers(genealogy.lazy()).collect()
    if t.filter(pl.col("strip_id").is_null() | pl.col("row").is_null()).height:
        raise GenealogyError("genealogy_to_e142: every transfer edge needs strip_id, row and col")
    outside = t.filter(
        (pl.col("row") < 0)
        | (pl.col("row") >= strip_rows)
        | (pl.col("col") < 0)
        | (pl.col("col") >= strip_cols)
    )
    if outside.height:
        r = outside.row(0, named=True)
        raise GenealogyError(
            f"genealogy_to_e142: strip {r['strip_id']!r} position row={r['row']} col={r['col']} "
            f"lies outside {strip_rows} x {strip_cols}"
        )
    rejected = set(rejected)
    sx, sy = axis_signs(axis_direction)
    wafers = t.select("from_lot_id", "from_wafer_id").unique(maintain_order=True)
    doc = E142Document(layouts=[Layout("Strip", cols=strip_cols, rows=strip_rows)])
    for lot, wafer in wafers.iter_rows():
        doc.substrates.append(Substrate("Wafer", f"{lot}.{wafer}", lot_id=lot))
    if wafer_die is not None:
        wd = (
            wafer_die.lazy()
            .select("lot_id", "wafer_id", "x", "y", pl.col("hbin").alias("bin"))
            .collect()
        )
        wd = wd.join(
            wafers.rename({"from_lot_id": "lot_id", "from_wafer_id": "wafer_id"}),
            on=["lot_id", "wafer_id"],
        ).with_columns((pl.col("lot_id") + "." + pl.col("wafer_id")).alias("substrate_id"))
        wafer_doc = E142Document.from_die(
            wd.with_columns(pl.col("bin").clip(0, 65534)),
            layout_id="Die",
            axis_direction=wafer_axis_direction,
            bin_type="Integer2",
            bins=[BinDefinition("0001", "Pass")],
        )
        doc.layouts = wafer_doc.layouts + doc.layouts
        doc.substrate_maps.extend(wafer_doc.substrate_maps)
    for (strip_id,), part in t.sort("strip_id", "row", "col").group_by(
        ["strip_id"], maintain_order=True
    ):
        lots = part.get_column("assembly_lot_id").unique()
        if lots.len() != 1:
            raise GenealogyError(
                f"genealogy_to_e142: strip {strip_id!r} belongs to lots {lots.to_list()}"
            )
        doc.substrates.append(Substrate("Strip", strip_id, lot_id=lots[0]))
        grid = [["."] * strip_cols for _ in range(strip_rows)]
        rows = part.get_column("row").to_numpy()
        cols = part.get_column("col").to_numpy()
        cx, cy = cell_to_canonical(rows, cols, strip_rows, strip_cols, origin_location)
        tx, ty = (sx * cx).tolist(), (sy * cy).tolist()
        ids = []
        by_wafer: dict[tuple[str, str], list[tuple[int, int, int, int]]] = {}
        for i, e in enumerate(part.iter_rows(named=True)):
            grid[e["row"]][e["col"]] = "X" if e["unit_id"] in rejected else "1"
            if e["unit_id"] is not None:
                ids.append((tx[i], ty[i], e["unit_id"]))
            key = (e["from_lot_id"], e["from_wafer_id"])
            by_wafer.setdefault(key, []).append((e["from_x"], e["from_y"], tx[i], ty[i]))
        overlays = [
            Overlay(
                "XOut",
                bin_code_map=BinCodeMap(
                    "ASCII",
                    ".",
                    grid,
                    [BinDefinition("1", "Pass"), BinDefinition("X", "Fail", "X-out")],
                ),
            ),
            Overlay("UnitIds", device_ids=ids),
            Overlay(
                "TransferMap",
                transfer_maps=[
                    TransferMap(
                        "Wafer",
                        f"{lot}.{wafer}",
                        moves,
                        from_layout_specifier="Die" if wafer_die is not None else None,
                    )
                    for (lot, wafer), moves in by_wafer.items()
                ],
            ),
        ]
        doc.substrate_maps.append(
            SubstrateMap(
                "Strip",
                strip_id,
                "Strip",
                overlays,
                origin_location=origin_location,
                axis_direction=axis_direction,
            )
        )
    return doc


def _transfers(genealogy: pl.LazyFrame) -> pl.LazyFrame:
    return genealogy.filter(pl.col("relation") == "transfer")


def check_genealogy(
    genealogy: pl.DataFrame | pl.LazyFrame, die: pl.DataFrame | pl.LazyFrame | None = None
) -> None:
    """Raise :class:`GenealogyError` when the edges cannot be traced unambiguously.

    Checks: a die transferred twice, two die into one unit or one strip position, a lot-edge
    cycle, and (with ``die``, the lake's ``die`` table) a transfer from a die that wafer sort
    never tested. Messages name the edge, the die and the edge's ``source``.
    """
    g = genealogy.lazy().collect()
    t = g.filter(pl.col("relation") == "transfer")
    for keys, what in (
        (["from_lot_id", "from_wafer_id", "from_x", "from_y"], "die transferred twice"),
        (["unit_id"], "unit receiving two die"),
        (["strip_id", "row", "col"], "strip position receiving two die"),
    ):
        sub = t.drop_nulls(keys)
        dup = sub.select(keys).is_duplicated()
        if dup.any():
            rows = sub.filter(dup).sort(keys).head(2)
            shown = ", ".join(f"{k}={rows.item(0, k)!r}" for k in keys)
            raise GenealogyError(
                f"genealogy: {what} ({shown}): edges {rows.item(0, 'edge_id')} "
                f"({rows.item(0, 'source')}) and {rows.item(1, 'edge_id')} ({rows.item(1, 'source')})"
            )
    lot_lineage(g)  # raises on cycles
    if die is not None:
        tested = (
            die.lazy()
            .select(
                pl.col("lot_id").alias("from_lot_id"),
                pl.col("wafer_id").alias("from_wafer_id"),
                pl.col("x").alias("from_x"),
                pl.col("y").alias("from_y"),
            )
            .unique()
        )
        orphans = (
            t.lazy()
            .join(
                tested,
                on=["from_lot_id", "from_wafer_id", "from_x", "from_y"],
                how="anti",
                nulls_equal=False,
            )
            .collect()
        )
        if orphans.height:
            r = orphans.row(0, named=True)
            raise GenealogyError(
                f"genealogy: {orphans.height} transfer edge(s) point to a die wafer sort never "
                f"tested, e.g. lot {r['from_lot_id']!r} wafer {r['from_wafer_id']!r} x={r['from_x']} "
                f"y={r['from_y']} (edge {r['edge_id']}, {r['source']}); check the TransferMap's "
                "coordinate convention against the sort data"
            )


def lot_lineage(genealogy: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Every (lot, ancestor) pair over ``merge``/``split`` edges, any depth.

    Columns: ``lot_id``, ``ancestor_lot_id``, ``depth`` (1 = a direct source), ``fraction``
    (share of the lot's input that came from the ancestor: edge quantities divided by the lot's
    total input, multiplied along the path and summed over paths). Raises
    :class:`GenealogyError` on a cycle, naming a lot on it.
    """
    edges = (
        genealogy.lazy()
        .filter(pl.col("relation").is_in(["merge", "split"]))
        .group_by(
            pl.col("assembly_lot_id").alias("lot_id"),
            pl.col("from_lot_id").alias("ancestor_lot_id"),
        )
        .agg(pl.col("qty").sum().cast(pl.Float64).alias("qty"))
        .collect()
    )
    schema_out = {
        "lot_id": pl.String,
        "ancestor_lot_id": pl.String,
        "depth": pl.Int32,
        "fraction": pl.Float64,
    }
    if edges.height == 0:
        return pl.DataFrame(schema=schema_out)
    self_loop = edges.filter(pl.col("lot_id") == pl.col("ancestor_lot_id"))
    if self_loop.height:
        raise GenealogyError(f"genealogy: lot {self_loop.item(0, 'lot_id')!r} is its own source")
    direct = edges.with_columns(
        (pl.col("qty") / pl.col("qty").sum().over("lot_id")).fill_nan(0.0).alias("fraction"),
        pl.lit(1, dtype=pl.Int32).alias("depth"),
    ).select("lot_id", "ancestor_lot_id", "depth", "fraction")
    frontier = direct
    parts = [direct]
    n_lots = pl.concat([edges.get_column("lot_id"), edges.get_column("ancestor_lot_id")]).n_unique()
    for depth in range(2, n_lots + 2):
        step = (
            frontier.join(
                direct.select(
                    pl.col("lot_id").alias("ancestor_lot_id"),
                    pl.col("ancestor_lot_id").alias("next"),
                    pl.col("fraction").alias("f2"),
                ),
                on="ancestor_lot_id",
            )
            .select(
                "lot_id",
                pl.col("next").alias("ancestor_lot_id"),
                pl.lit(depth, dtype=pl.Int32).alias("depth"),
                (pl.col("fraction") * pl.col("f2")).alias("fraction"),
            )
            .group_by("lot_id", "ancestor_lot_id", "depth")
            .agg(pl.col("fraction").sum())
        )
        if step.height == 0:
            break
        cyc = step.filter(pl.col("lot_id") == pl.col("ancestor_lot_id"))
        if cyc.height:
            raise GenealogyError(
                f"genealogy: lot {cyc.item(0, 'lot_id')!r} descends from itself (a merge/split "
                "cycle); lot edges must point from earlier lots to later ones"
            )
        parts.append(step)
        frontier = step
    else:
        raise GenealogyError("genealogy: merge/split edges form a cycle")
    return (
        pl.concat(parts)
        .group_by("lot_id", "ancestor_lot_id")
        .agg(pl.col("depth").min(), pl.col("fraction").sum())
        .sort("lot_id", "depth", "ancestor_lot_id")
        .select(list(schema_out))
    )


# --- tracing -------------------------------------------------------------------------------------


def trace(
    units: pl.LazyFrame,
    genealogy: pl.LazyFrame | None = None,
    *,
    ecid_pattern: str | None = DEFAULT_ECID_PATTERN,
) -> pl.LazyFrame:
    """Each unit row with the wafer die it came from.

    ``units`` is the ``units`` table (any subset of rows); ``genealogy`` the ``genealogy``
    table. The die is taken, in this order, from a transfer edge naming the unit id, a transfer
    edge at the unit's strip position (``strip_id``, ``row``, ``col``), the decoded ECID
    (``ecid_pattern``; None: do not decode), and the unit's own ``traced_*`` columns.

    Returns the units' columns (``traced_*`` dropped) plus ``lot_id``, ``wafer_id``, ``x``,
    ``y`` (the source die, in the ``die`` table's coordinates; null when untraceable),
    ``trace_source`` (``unit_id``, ``position``, ``ecid``, ``units`` or null) and
    ``trace_conflict`` (true where genealogy and a readable ECID disagree: a mislabelled unit or
    a wrong TransferMap convention).
    """
    lf = units.lazy()
    names = lf.collect_schema().names()
    base = lf.drop([c for c in names if c.startswith("traced_")])
    candidates: list[tuple[str, pl.LazyFrame | None]] = []
    if genealogy is not None:
        t = _transfers(genealogy.lazy())
        g_names = set(genealogy.lazy().collect_schema().names())

        def die_cols(prefix: str) -> list[pl.Expr]:
            return [
                pl.col("from_lot_id").alias(f"{prefix}_lot_id"),
                pl.col("from_wafer_id").alias(f"{prefix}_wafer_id"),
                pl.col("from_x").cast(pl.Int32).alias(f"{prefix}_x"),
                pl.col("from_y").cast(pl.Int32).alias(f"{prefix}_y"),
            ]

        if "unit_id" in g_names:
            by_unit = (
                t.filter(pl.col("unit_id").is_not_null())
                .select("unit_id", *die_cols("u"))
                .unique("unit_id", keep="first")
            )
            base = base.join(by_unit, on="unit_id", how="left", maintain_order="left")
            candidates.append(("unit_id", None))
        strip_keys = ["strip_id", "row", "col"]
        if set(strip_keys) <= g_names and set(strip_keys) <= set(names):
            by_pos = (
                t.filter(pl.all_horizontal(pl.col(c).is_not_null() for c in strip_keys))
                .select(
                    "strip_id",
                    pl.col("row").cast(pl.Int32).alias("_row"),
                    pl.col("col").cast(pl.Int32).alias("_col"),
                    *die_cols("p"),
                )
                .unique(["strip_id", "_row", "_col"], keep="first")
            )
            base = (
                base.with_columns(
                    pl.col("row").cast(pl.Int32).alias("_row"),
                    pl.col("col").cast(pl.Int32).alias("_col"),
                )
                .join(
                    by_pos,
                    on=["strip_id", "_row", "_col"],
                    how="left",
                    nulls_equal=False,
                    maintain_order="left",
                )
                .drop("_row", "_col")
            )
            candidates.append(("position", None))
    if ecid_pattern is not None and "ecid" in names:
        base = (
            base.with_columns(decode_ecid("ecid", pattern=ecid_pattern).alias("_ecid"))
            .with_columns(*[pl.col("_ecid").struct.field(c).alias(f"e_{c}") for c in _DIE_KEY])
            .drop("_ecid")
        )
        candidates.append(("ecid", None))
    if all(f"traced_{c}" in names for c in ("lot_id", "wafer_id", "x", "y")):
        base = base.join(
            lf.select(
                "unit_id",
                "insertion",
                *[pl.col(f"traced_{c}").alias(f"t_{c}") for c in _DIE_KEY],
            ),
            on=["unit_id", "insertion"],
            how="left",
            maintain_order="left",
        )
        candidates.append(("units", None))
    prefixes = {"unit_id": "u", "position": "p", "ecid": "e", "units": "t"}
    order = [prefixes[name] for name, _ in candidates]
    complete = {
        pre: pl.all_horizontal(pl.col(f"{pre}_{c}").is_not_null() for c in _DIE_KEY)
        for pre in order
    }
    out_cols = []
    for c in _DIE_KEY:
        expr = pl.lit(None, dtype=pl.Int32 if c in ("x", "y") else pl.String)
        for pre in reversed(order):
            expr = pl.when(complete[pre]).then(pl.col(f"{pre}_{c}")).otherwise(expr)
        out_cols.append(expr.alias(c))
    source = pl.lit(None, dtype=pl.String)
    for name, _ in reversed(candidates):
        source = pl.when(complete[prefixes[name]]).then(pl.lit(name)).otherwise(source)
    out_cols.append(source.alias("trace_source"))
    gen = [pre for pre in ("u", "p") if pre in order]
    if "e" in order and gen:
        gen_ok = pl.any_horizontal(complete[pre] for pre in gen)
        differs = pl.any_horizontal(
            pl.coalesce(*[pl.col(f"{pre}_{c}") for pre in gen]) != pl.col(f"e_{c}")
            for c in _DIE_KEY
        )
        out_cols.append((gen_ok & complete["e"] & differs).fill_null(False).alias("trace_conflict"))
    else:
        out_cols.append(pl.lit(False).alias("trace_conflict"))
    helper = [f"{pre}_{c}" for pre in order for c in _DIE_KEY]
    return base.with_columns(out_cols).drop(helper)


def lineage_conflicts(
    traced: pl.DataFrame | pl.LazyFrame, genealogy: pl.DataFrame | pl.LazyFrame
) -> pl.DataFrame:
    """Traced units whose source wafer did not feed their assembly lot by the lot edges.

    A unit of assembly lot ``L`` traced to (lot, wafer) is consistent when a ``merge``/``split``
    edge into ``L`` or into one of its ancestor lots (:func:`lot_lineage`, any depth) comes from
    that lot and wafer (or from that lot with no wafer named). Returns the inconsistent rows of
    ``traced`` (empty when all agree); units of assembly lots without lot edges are not judged.
    """
    edges = (
        genealogy.lazy()
        .filter(pl.col("relation").is_in(["merge", "split"]))
        .select(
            pl.col("assembly_lot_id").alias("_via"),
            pl.col("from_lot_id").alias("lot_id"),
            pl.col("from_wafer_id").alias("_wafer"),
        )
        .unique()
        .collect()
    )
    t = traced.lazy().collect().with_row_index("_r")
    if edges.height == 0:
        return t.clear().drop("_r")
    lineage = lot_lineage(genealogy)
    chain = pl.concat(
        [
            lineage.select("lot_id", pl.col("ancestor_lot_id").alias("_via")),
            edges.select(pl.col("_via").alias("lot_id"), "_via").unique(),
        ]
    ).unique()
    judged = t.filter(
        pl.col("assembly_lot_id").is_in(chain.get_column("lot_id").implode())
        & pl.col("lot_id").is_not_null()
    )
    ok = (
        judged.select("_r", pl.col("assembly_lot_id").alias("_unit_lot"), "lot_id", "wafer_id")
        .join(chain.rename({"lot_id": "_unit_lot"}), on="_unit_lot")
        .join(edges, on=["_via", "lot_id"])
        .filter(pl.col("_wafer").is_null() | (pl.col("_wafer") == pl.col("wafer_id")))
        .select("_r")
        .unique()
    )
    return judged.join(ok, on="_r", how="anti").sort("_r").drop("_r")


def traced_units(
    units: pl.LazyFrame,
    genealogy: pl.LazyFrame | None = None,
    *,
    ecid_pattern: str | None = DEFAULT_ECID_PATTERN,
) -> pl.LazyFrame:
    """The ``units`` table with its ``traced_*`` columns filled by :func:`trace` (same schema)."""
    columns = schema.table("units").columns
    return (
        trace(units, genealogy, ecid_pattern=ecid_pattern)
        .with_columns(
            pl.col("lot_id").alias("traced_lot_id"),
            pl.col("wafer_id").alias("traced_wafer_id"),
            pl.col("x").cast(pl.Int32).alias("traced_x"),
            pl.col("y").cast(pl.Int32).alias("traced_y"),
        )
        .select(columns)
    )


def fails_on_wafer(
    traced: pl.LazyFrame,
    *,
    insertions: Sequence[str] | None = None,
    by: Sequence[str] = (),
) -> pl.LazyFrame:
    """Final-test / burn-in results stacked in wafer coordinates (DOMAIN §4.5).

    ``traced`` is :func:`trace` output. Per ``by`` group (e.g. ``("insertion",)``, or a product
    column joined in), die position ``x``, ``y`` over every traced lot and wafer: ``n_units``
    (units traced there), ``n_failed`` (units that failed any of ``insertions``, default every
    insertion present), ``fail_rate``. One unit counts once per group.
    """
    by = list(by)
    lf = traced.lazy().filter(pl.col("x").is_not_null() & pl.col("y").is_not_null())
    if insertions is not None:
        lf = lf.filter(pl.col("insertion").is_in(list(insertions)))
    per_unit = lf.group_by(*by, "unit_id").agg(
        pl.col("x").first(), pl.col("y").first(), (~pl.col("passed")).any().alias("failed")
    )
    return (
        per_unit.group_by(*by, "x", "y")
        .agg(
            pl.len().cast(pl.Int64).alias("n_units"),
            pl.col("failed").sum().cast(pl.Int64).alias("n_failed"),
        )
        .with_columns((pl.col("n_failed") / pl.col("n_units")).alias("fail_rate"))
        .sort(*by, "y", "x")
    )


# --- screens -------------------------------------------------------------------------------------


def neighbourhood_scores(
    die: pl.LazyFrame,
    *,
    weights: Mapping[tuple[int, int], float] | None = None,
    by: Sequence[str] = ("lot_id", "wafer_id"),
) -> pl.LazyFrame:
    """GDBN neighbour weight of every good die: the weights of its failing neighbours, summed.

    ``die`` is the lake's ``die`` table (only ``final`` rows are used when the column exists);
    a die is bad when ``passed`` is false. ``weights`` maps neighbour offsets ``(dx, dy)`` to
    weights: default :data:`GALAXY_WEIGHTS` (adjacent 2, diagonal 1, DOMAIN §2.3: the Galaxy
    rule fails a die at a sum >= 8); off-wafer and untested neighbours count as good (Galaxy's
    default for edge die). Returns ``by``, ``x``, ``y``, ``score`` (float), ``n_bad``
    (failing neighbours) for every good die.
    """
    weights = dict(GALAXY_WEIGHTS if weights is None else weights)
    by = list(by)
    lf = die.lazy()
    if "final" in lf.collect_schema().names():
        lf = lf.filter(pl.col("final").fill_null(True))
    cells = lf.select(*by, pl.col("x").cast(pl.Int64), pl.col("y").cast(pl.Int64), "passed")
    bad = cells.filter(~pl.col("passed")).select(*by, "x", "y")
    good = cells.filter(pl.col("passed")).select(*by, "x", "y")
    shifted = [
        bad.with_columns(
            (pl.col("x") - dx).alias("x"),
            (pl.col("y") - dy).alias("y"),
            pl.lit(float(w)).alias("w"),
        )
        for (dx, dy), w in weights.items()
    ]
    hits = (
        pl.concat(shifted)
        .group_by(*by, "x", "y")
        .agg(pl.col("w").sum().alias("score"), pl.len().cast(pl.Int32).alias("n_bad"))
    )
    return (
        good.join(hits, on=[*by, "x", "y"], how="left", maintain_order="left")
        .with_columns(pl.col("score").fill_null(0.0), pl.col("n_bad").fill_null(0))
        .with_columns(pl.col("x").cast(pl.Int32), pl.col("y").cast(pl.Int32))
    )


def _outcomes(traced: pl.LazyFrame, insertions: Sequence[str] | None) -> pl.DataFrame:
    """One row per traced die: did its unit fail any of ``insertions``?"""
    lf = traced.lazy().filter(pl.all_horizontal(pl.col(c).is_not_null() for c in _DIE_KEY))
    if insertions is not None:
        lf = lf.filter(pl.col("insertion").is_in(list(insertions)))
    out = lf.group_by(_DIE_KEY).agg((~pl.col("passed")).any().alias("failed")).collect()
    if out.height == 0:
        raise GenealogyError(
            "no traced unit with a test outcome: trace the units first (genealogy.trace) and "
            "check the insertions asked for"
        )
    return out


def _hypergeom_sf(k: int, population: int, successes: int, draws: int) -> float:
    """P(X >= k) for X ~ Hypergeometric(population, successes, draws)."""
    from scipy import stats

    if draws == 0:
        return 1.0
    return float(stats.hypergeom.sf(k - 1, population, successes, draws))


def _screen_row(label: str, flagged: np.ndarray, failed: np.ndarray) -> dict:
    n = int(failed.size)
    total_fails = int(failed.sum())
    n_flag = int(flagged.sum())
    caught = int((flagged & failed).sum())
    overkill = n_flag - caught
    scrap_rate = n_flag / n if n else float("nan")
    expected = scrap_rate * total_fails
    base = total_fails / n if n else float("nan")
    precision = caught / n_flag if n_flag else float("nan")
    return {
        "screen": label,
        "n_die": n,
        "n_fails": total_fails,
        "n_flagged": n_flag,
        "caught": caught,
        "overkill": overkill,
        "escapes": total_fails - caught,
        "scrap_rate": scrap_rate,
        "catch_rate": caught / total_fails if total_fails else float("nan"),
        "fails_per_scrapped": precision,
        "random_fails_per_scrapped": base,
        "lift": precision / base if n_flag and base > 0 else float("nan"),
        "random_expected_caught": expected,
        "p_value": _hypergeom_sf(caught, n, total_fails, n_flag),
    }


_SCREEN_SCHEMA = {
    "screen": pl.String,
    "n_die": pl.Int64,
    "n_fails": pl.Int64,
    "n_flagged": pl.Int64,
    "caught": pl.Int64,
    "overkill": pl.Int64,
    "escapes": pl.Int64,
    "scrap_rate": pl.Float64,
    "catch_rate": pl.Float64,
    "fails_per_scrapped": pl.Float64,
    "random_fails_per_scrapped": pl.Float64,
    "lift": pl.Float64,
    "random_expected_caught": pl.Float64,
    "p_value": pl.Float64,
}


def screen_effectiveness(
    flags: pl.DataFrame | pl.LazyFrame,
    traced: pl.DataFrame | pl.LazyFrame,
    *,
    insertions: Sequence[str] | None = None,
    rule: str = "rule",
    max_combination: int = 2,
) -> pl.DataFrame:
    """Per screen rule and rule combination: later fails caught versus good die scrapped.

    ``flags``: die flagged at wafer sort, one row per die and rule (``lot_id``, ``wafer_id``,
    ``x``, ``y``, ``rule``) in the ``die`` table's coordinates: the PAT ``dispositions`` table,
    or GDBN flags. ``traced``: :func:`trace` output (units with their source die). The
    population is every traced die with an outcome at ``insertions`` (default: all); the screen
    is judged as if run in shadow mode (flagged die were still packaged, so their outcome is
    known). Flags on die without an outcome are not counted.

    Rows: each rule, the union of all rules (``any``), and for up to ``max_combination`` rules
    their union (``A | B``) and intersection (``A & B``). Columns: ``screen``, ``n_die``,
    ``n_fails`` (population fails), ``n_flagged`` (scrap), ``caught`` (flagged and failed
    later), ``overkill`` (flagged, passed later: good die scrapped), ``escapes`` (failed, not
    flagged), ``scrap_rate``, ``catch_rate`` (caught / fails), ``fails_per_scrapped``
    (caught / flagged), ``random_fails_per_scrapped`` (the population fail rate: what random
    scrapping catches per die), ``lift`` (the ratio of the two), ``random_expected_caught``
    (scrap_rate x fails) and ``p_value`` (one-sided hypergeometric P(caught or more) under
    random scrapping of ``n_flagged`` die).
    """
    from itertools import combinations

    outcomes = _outcomes(traced.lazy(), insertions)
    fl = (
        flags.lazy()
        .select(
            *[pl.col(c) for c in ("lot_id", "wafer_id")],
            pl.col("x").cast(pl.Int32),
            pl.col("y").cast(pl.Int32),
            pl.col(rule).cast(pl.String).alias("_rule"),
        )
        .unique()
        .collect()
    )
    rules = sorted(fl.get_column("_rule").drop_nulls().unique().to_list())
    if not rules:
        raise GenealogyError("screen_effectiveness: the flags frame holds no rule")
    wide = outcomes.join(
        fl.with_columns(pl.lit(True).alias("_f")).pivot(
            on="_rule", index=_DIE_KEY, values="_f", aggregate_function="first"
        ),
        on=_DIE_KEY,
        how="left",
        maintain_order="left",
    )
    failed = wide.get_column("failed").to_numpy().astype(bool)
    masks = {
        r: wide.get_column(r).fill_null(False).to_numpy().astype(bool)
        if r in wide.columns
        else np.zeros(wide.height, bool)
        for r in rules
    }
    rows = [_screen_row(r, masks[r], failed) for r in rules]
    if len(rules) > 1:
        rows.append(_screen_row("any", np.logical_or.reduce([masks[r] for r in rules]), failed))
        for size in range(2, min(max_combination, len(rules)) + 1):
            for combo in combinations(rules, size):
                stack = [masks[r] for r in combo]
                rows.append(_screen_row(" | ".join(combo), np.logical_or.reduce(stack), failed))
                rows.append(_screen_row(" & ".join(combo), np.logical_and.reduce(stack), failed))
    return pl.DataFrame(rows, schema=_SCREEN_SCHEMA)


def screen_tradeoff(
    scores: pl.DataFrame | pl.LazyFrame,
    traced: pl.DataFrame | pl.LazyFrame,
    *,
    thresholds: Sequence[float] | None = None,
    score: str = "score",
    insertions: Sequence[str] | None = None,
) -> pl.DataFrame:
    """The catch / overkill trade-off as a screen threshold varies (a die is scrapped at
    ``score >= threshold``), beside random scrapping at the same scrap rate.

    ``scores``: one row per die (``lot_id``, ``wafer_id``, ``x``, ``y``, ``score``), e.g.
    :func:`neighbourhood_scores`; die of the traced population without a score count as score 0.
    ``thresholds`` default to every distinct positive score. Columns: ``threshold`` and those of
    :func:`screen_effectiveness` (``screen`` = ``"score >= t"``), plus ``random_catch_rate``
    (= ``scrap_rate``: random scrapping catches that share of the fails).
    """
    outcomes = _outcomes(traced.lazy(), insertions)
    sc = (
        scores.lazy()
        .select(
            "lot_id",
            "wafer_id",
            pl.col("x").cast(pl.Int32),
            pl.col("y").cast(pl.Int32),
            pl.col(score).cast(pl.Float64).alias("_s"),
        )
        .collect()
    )
    joined = outcomes.join(sc, on=_DIE_KEY, how="left", maintain_order="left").with_columns(
        pl.col("_s").fill_null(0.0)
    )
    values = joined.get_column("_s").to_numpy()
    failed = joined.get_column("failed").to_numpy().astype(bool)
    if thresholds is None:
        thresholds = sorted(v for v in np.unique(values) if v > 0)
    rows = []
    for t in thresholds:
        row = _screen_row(f"{score} >= {t:g}", values >= t, failed)
        rows.append({"threshold": float(t), **row, "random_catch_rate": row["scrap_rate"]})
    return pl.DataFrame(
        rows, schema={"threshold": pl.Float64, **_SCREEN_SCHEMA, "random_catch_rate": pl.Float64}
    )
