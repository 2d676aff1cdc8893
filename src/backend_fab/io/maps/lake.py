"""Map files as lake runs: detection and loading for ``backend-fab ingest``.

A map file becomes one run (``run_id`` = content hash, set by the ingest driver):

* wafer bin maps (E142 ``Wafer`` BinCodeMaps, G85, SINF) -> ``die`` (one row per tested die:
  quality Pass/Fail/Edge or undefined; ``Null``, ``Reference`` and ``Skip`` positions are not
  die) and ``wafers``; ``runs.insertion = "MAP"``. Like STDF data, ``x``/``y`` are the map's
  own (data) coordinates and ``wafers.pos_x``/``pos_y`` say which way they grow, so that the
  canonical frame is one sign flip away (:meth:`backend_fab.layout.Layout.to_canonical`);
* strip / frame / tray maps (E142 substrates other than wafers): their BinCodeMaps ->
  ``strip_maps`` (one row per occupied position with its code and quality) and their
  TransferMaps -> ``genealogy`` edges (relation ``transfer``, wafer die -> assembly lot, strip,
  row, col, and the unit id a DeviceIdMap gives that position); ``runs.insertion = "ASSEMBLY"``.
  The source die keeps ``FX``/``FY`` as written: the sort map's data coordinates, the numbers
  the lake's ``die`` table holds for that wafer.

Rows and columns of a strip are display cells of its map: row 0 at the top, col 0 at the left.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import polars as pl
import pyarrow as pa

from backend_fab import schema
from backend_fab.errors import MapFormatError

__all__ = [
    "STRIP_MAPS",
    "detect_e142",
    "detect_g85",
    "detect_sinf",
    "die_tables",
    "e142_tables",
    "edge_id",
    "edge_ids",
    "load_e142",
    "load_g85",
    "load_sinf",
    "wafer_id_of",
]

STRIP_MAPS = schema.register(
    schema.Table(
        name="strip_maps",
        schema=pa.schema(
            [
                ("run_id", pa.string()),
                ("substrate_type", pa.string()),
                ("assembly_lot_id", pa.string()),
                ("strip_id", pa.string()),
                ("map_name", pa.string()),
                ("row", pa.int32()),
                ("col", pa.int32()),
                ("bin_code", pa.string()),
                ("bin", pa.int32()),
                ("bin_quality", pa.string()),
                ("unit_id", pa.string()),
            ]
        ),
        keys=("run_id", "strip_id", "map_name", "row", "col"),
        run_scoped=True,
        description="Occupied positions of strip/frame/tray maps (E142 BinCodeMap): code, "
        "quality (X-outs are Fail), unit id.",
    )
)

_NOT_DIE = ("Null", "Reference", "Skip")


def edge_id(*parts) -> str:
    """A stable id for a genealogy edge: sha1 of its fields, 20 hex digits."""
    text = "\x1f".join("" if p is None else str(p) for p in parts)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]


EDGE_FIELDS = (
    "relation",
    "from_lot_id",
    "from_wafer_id",
    "from_x",
    "from_y",
    "assembly_lot_id",
    "strip_id",
    "row",
    "col",
    "unit_id",
)


def edge_ids(edges: pl.DataFrame) -> pl.Series:
    """``edge_id`` of every genealogy edge: :func:`edge_id` of its :data:`EDGE_FIELDS`."""
    cols = [c for c in EDGE_FIELDS if c in edges.columns]
    return pl.Series(
        "edge_id", [edge_id(*row) for row in edges.select(cols).iter_rows()], dtype=pl.String
    )


def _runs(**values) -> pl.DataFrame:
    return schema.conform(
        "runs", pl.DataFrame({"run_id": [""], **{k: [v] for k, v in values.items()}})
    )


def die_tables(
    die: pl.DataFrame, *, fmt: str, product: str | None, name: str
) -> dict[str, pl.DataFrame]:
    """``die`` and ``wafers`` rows from a flattened wafer map frame (``*.die()`` output)."""
    keep = die.filter(pl.col("bin_quality").is_null() | ~pl.col("bin_quality").is_in(_NOT_DIE))
    if keep.height == 0:
        raise MapFormatError(
            f"{name}: the map holds no die (every position is null, reference or skip)"
        )
    dup = keep.select("lot_id", "substrate_id", "data_x", "data_y").is_duplicated()
    if dup.any():
        row = keep.filter(dup).row(0, named=True)
        raise MapFormatError(
            f"{name}: wafer {row['substrate_id']!r} appears twice with a die at "
            f"x={row['data_x']}, y={row['data_y']}; one map per wafer"
        )
    passed = (
        pl.when(pl.col("bin_quality") == "Pass")
        .then(True)
        .when(pl.col("bin_quality").is_in(["Fail", "Edge"]))
        .then(False)
        .otherwise(None)
    )
    die_rows = keep.with_row_index("part_seq").select(
        pl.lit("").alias("run_id"),
        pl.col("part_seq").cast(pl.Int64),
        pl.lit(product, dtype=pl.String).alias("product"),
        pl.col("lot_id"),
        pl.col("substrate_id").alias("wafer_id"),
        pl.col("data_x").alias("x"),
        pl.col("data_y").alias("y"),
        pl.col("bin").alias("hbin"),
        pl.col("bin").alias("sbin"),
        passed.alias("passed"),
        pl.col("device_id").alias("part_id"),
        pl.col("bin_code").alias("part_txt"),
        pl.lit(0, dtype=pl.Int16).alias("retest_index"),
        pl.lit(True).alias("final"),
        pl.col("pos_x"),
        pl.col("pos_y"),
    )
    wafers = (
        die_rows.group_by("lot_id", "wafer_id", maintain_order=True)
        .agg(
            pl.len().cast(pl.Int64).alias("part_count"),
            pl.col("passed").fill_null(False).sum().cast(pl.Int64).alias("good_count"),
            pl.col("pos_x").first(),
            pl.col("pos_y").first(),
        )
        .with_columns(
            pl.lit("").alias("run_id"),
            pl.lit(product, dtype=pl.String).alias("product"),
        )
    )
    die_rows = die_rows.drop("pos_x", "pos_y")
    lots = die_rows.get_column("lot_id").drop_nulls().unique(maintain_order=True).to_list()
    runs = _runs(
        product=product,
        lot_id=lots[0] if len(lots) == 1 else None,
        insertion="MAP",
        tester_type=fmt,
        n_parts=die_rows.height,
        status="ok",
    )
    return {
        "runs": runs,
        "die": schema.conform("die", die_rows),
        "wafers": schema.conform("wafers", wafers),
    }


def wafer_id_of(substrate_id: str, lot_id: str | None) -> str:
    """The lake's wafer id of an E142 wafer substrate: ``SubstrateId`` without a leading
    ``"<LotId>"`` and one separator (``.``, ``-``, ``_`` or ``:``) when it has one
    (``"VC339684.05"`` in lot ``"VC339684"`` -> ``"05"``), else ``SubstrateId`` as written.

    SubstrateIds must be unique within a file, so wafer maps of several lots name wafers with
    their lot; the sort data (STDF ``WIR.WAFER_ID``) usually names them by slot alone.
    """
    n = len(lot_id or "")
    if (
        lot_id
        and substrate_id.startswith(lot_id)
        and len(substrate_id) > n + 1
        and substrate_id[n] in ".-_:"
    ):
        return substrate_id[n + 1 :]
    return substrate_id


def e142_tables(doc, *, name: str = "<bytes>") -> dict[str, pl.DataFrame]:
    """Lake tables of an :class:`~backend_fab.io.maps.E142Document` (see the module docstring).

    Wafer ids follow :func:`wafer_id_of`.
    """
    die = doc.die()
    wafer_die = die.filter(pl.col("substrate_type").str.to_lowercase() == "wafer")
    wafer_die = wafer_die.with_columns(
        pl.Series(
            "substrate_id",
            [
                wafer_id_of(s, lot)
                for s, lot in wafer_die.select("substrate_id", "lot_id").iter_rows()
            ],
            dtype=pl.String,
        )
    )
    other = die.filter(pl.col("substrate_type").str.to_lowercase() != "wafer")
    transfers = doc.transfers()
    products = [la.product_id for la in doc.layouts if la.product_id]
    product = products[0] if products else None
    out: dict[str, pl.DataFrame] = {}
    if wafer_die.height:
        out = die_tables(wafer_die, fmt="SEMI E142", product=product, name=name)
    if other.height:
        strip = other.select(
            pl.lit("").alias("run_id"),
            "substrate_type",
            pl.col("lot_id").alias("assembly_lot_id"),
            pl.col("substrate_id").alias("strip_id"),
            "map_name",
            "row",
            "col",
            "bin_code",
            "bin",
            "bin_quality",
            pl.col("device_id").alias("unit_id"),
        )
        out["strip_maps"] = schema.conform("strip_maps", strip)
    if transfers.height:
        missing = transfers.filter(pl.col("from_lot_id").is_null() | pl.col("to_lot_id").is_null())
        if missing.height:
            row = missing.row(0, named=True)
            which = (
                (row["from_substrate_type"], row["from_substrate_id"])
                if row["from_lot_id"] is None
                else (row["to_substrate_type"], row["to_substrate_id"])
            )
            raise MapFormatError(
                f"{name}: TransferMap into {row['to_substrate_type']} {row['to_substrate_id']!r}: "
                f"Substrates has no <Substrate SubstrateType={which[0]!r} "
                f"SubstrateId={which[1]!r}> with a <LotId>; genealogy needs the lot of both ends"
            )
        ids = (
            other.select(
                pl.col("substrate_id").alias("to_substrate_id"),
                pl.col("row").alias("to_row"),
                pl.col("col").alias("to_col"),
                pl.col("device_id").alias("unit_id"),
            )
            .filter(pl.col("unit_id").is_not_null())
            .unique(["to_substrate_id", "to_row", "to_col"])
        )
        edges = transfers.join(
            ids, on=["to_substrate_id", "to_row", "to_col"], how="left", maintain_order="left"
        )
        edges = edges.with_columns(
            pl.Series(
                "from_substrate_id",
                [
                    wafer_id_of(s, lot)
                    for s, lot in edges.select("from_substrate_id", "from_lot_id").iter_rows()
                ],
                dtype=pl.String,
            )
        )
        edges = edges.select(
            pl.lit("transfer").alias("relation"),
            pl.col("from_lot_id"),
            pl.col("from_substrate_id").alias("from_wafer_id"),
            pl.col("from_data_x").alias("from_x"),
            pl.col("from_data_y").alias("from_y"),
            pl.col("to_lot_id").alias("assembly_lot_id"),
            pl.col("to_substrate_id").alias("strip_id"),
            pl.col("to_row").alias("row"),
            pl.col("to_col").alias("col"),
            pl.col("unit_id"),
            pl.lit(1, dtype=pl.Int64).alias("qty"),
            pl.lit("E142 TransferMap").alias("source"),
            pl.lit("").alias("run_id"),
        )
        edges = edges.with_columns(edge_ids(edges))
        out["genealogy"] = schema.conform("genealogy", edges)
    if not out:
        raise MapFormatError(f"{name}: the E142 file holds no BinCodeMap and no TransferMap data")
    if "runs" not in out:
        lots = [
            s.lot_id for s in doc.substrates if s.lot_id and s.substrate_type.lower() != "wafer"
        ]
        out["runs"] = _runs(
            product=product,
            lot_id=lots[0] if len(set(lots)) == 1 else None,
            insertion="ASSEMBLY",
            tester_type="SEMI E142",
            n_parts=out["genealogy"].height if "genealogy" in out else 0,
            status="ok",
        )
    else:
        out["runs"] = out["runs"].with_columns(pl.lit("SEMI E142").alias("tester_type"))
    return out


# --- detectors and loaders registered with backend_fab.ingest ---------------------------------------


def _xml_head(head: bytes) -> bytes:
    return head.lstrip(b"\xef\xbb\xbf \t\r\n")


def detect_e142(path: Path, head: bytes) -> bool:
    """An XML document whose root element is ``MapData``."""
    h = _xml_head(head)
    return h.startswith(b"<") and re.search(rb"<(\w+:)?MapData[\s>]", h) is not None


def detect_g85(path: Path, head: bytes) -> bool:
    """G85 XML (a ``Map`` element holding a ``Device``) or the G85 ASCII header."""
    h = _xml_head(head)
    if h.startswith(b"<"):
        return re.search(rb"<(\w+:)?Map[\s>]", h) is not None and b"Device" in h
    text = h[:8192]
    return (
        re.search(rb"(?im)^\s*bin_?type\s*[:=]", text) is not None
        and re.search(rb"(?im)^\s*null_?bin\s*[:=]", text) is not None
    )


def detect_sinf(path: Path, head: bytes) -> bool:
    """SINF: ``RowData:`` lines under a ``KEY:value`` header with ``ROWCT``/``COLCT``/``WAFER``."""
    return (
        b"RowData:" in head and re.search(rb"(?m)^(ROWCT|COLCT|WAFER|BCEQU)\s*:", head) is not None
    )


def load_e142(path: Path, content: bytes) -> dict[str, pl.DataFrame]:
    from backend_fab.io.maps.e142 import read_e142

    return e142_tables(read_e142(content, name=str(path)), name=str(path))


def load_g85(path: Path, content: bytes) -> dict[str, pl.DataFrame]:
    from backend_fab.io.maps.g85 import read_g85

    maps = read_g85(content, name=str(path))
    frames = [m.die() for m in maps]
    products = [m.device_attrs.get("ProductId") for m in maps if m.device_attrs.get("ProductId")]
    die = pl.concat(frames) if frames else pl.DataFrame()
    return die_tables(
        die, fmt="SEMI G85", product=products[0] if products else None, name=str(path)
    )


def load_sinf(path: Path, content: bytes) -> dict[str, pl.DataFrame]:
    from backend_fab.io.maps.sinf import read_sinf

    m = read_sinf(content, name=str(path))
    return die_tables(m.die(), fmt="SINF", product=m.product, name=str(path))
