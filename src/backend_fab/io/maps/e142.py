"""SEMI E142 substrate maps (E142.1 XML): read, write, and flatten to die and transfer frames.

Object model (SEMI E142 / E142.1 [V: DOMAIN §4.2]): ``MapData`` holds ``Layouts`` (a ``Layout``
has a ``Dimension`` X = columns, Y = rows, optional ``DeviceSize``, ``StepSize``, ``LowerLeft``,
``ProductId`` and ``ChildLayouts``), ``Substrates`` (``SubstrateType``/``SubstrateId`` with
``LotId``, ``SlotNumber``, ``GoodDevices``, ``SupplierName``, ``Status``, ``AliasIds``) and
``SubstrateMaps``. A ``SubstrateMap`` (attributes ``SubstrateType``, ``SubstrateId``,
``LayoutSpecifier``, ``SubstrateSide``, ``Orientation``, ``OriginLocation``, ``AxisDirection``)
carries ``Overlay`` elements (``MapName``, ``MapVersion``) with ``ReferenceDevices`` and one of

* ``BinCodeMap`` (``BinType``, ``NullBin``, ``MapType``): ``BinDefinitions`` (``BinCode``,
  ``BinCount``, ``BinQuality`` Pass/Fail/Null/Reference/Skip/Edge, ``BinDescription``, ``Pick``)
  then one ``BinCode`` element per array row, top row first;
* ``DeviceIdMap``: ``DeviceIds/DeviceId`` elements, text = the id, ``X``/``Y`` = file coordinates;
* ``TransferMap`` (``FromSubstrateType``, ``FromSubstrateId``, ``FromLayoutSpecifier``): ``T``
  elements with ``FX``/``FY`` (position on the source substrate, in the source map's coordinates)
  and ``TX``/``TY`` (position on this substrate, in this map's coordinates).

Defaults when a SubstrateMap omits them: ``OriginLocation="LowerLeft"``, ``AxisDirection="UpRight"``,
``Orientation=0``. Absent optional attributes stay ``None`` in the model so that a written file
says exactly what the read file said (round trips keep the file's own convention). Coordinates
are normalised to the canonical frame only when flattening (:meth:`E142Document.die`,
:meth:`E142Document.transfers`); see ``backend_fab.io.maps._grid`` for the rule.
``DeviceDataMap`` overlays are not read (their content is tool-specific).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np
import polars as pl

from backend_fab.errors import MapFormatError
from backend_fab.io.maps._grid import (
    axis_signs,
    canonical_to_cell,
    cell_to_canonical,
    code_value,
    fit_array,
    join_row,
    normalise_bin_type,
    origin_cell,
    pos_flags,
    split_row,
)
from backend_fab.io.maps._xml import child, children, parse_xml, serialize_xml

__all__ = [
    "E142_NAMESPACE",
    "BinCodeMap",
    "BinDefinition",
    "E142Document",
    "Layout",
    "Overlay",
    "ReferenceDevice",
    "Substrate",
    "SubstrateMap",
    "TransferMap",
    "read_e142",
    "write_e142",
]

E142_NAMESPACE = "urn:semi-org:xsd.E142-1.V1005.SubstrateMap"
BIN_QUALITIES = ("Pass", "Fail", "Null", "Reference", "Skip", "Edge")


@dataclass
class Layout:
    """A ``Layout``: ``cols`` x ``rows`` devices (``Dimension`` X, Y)."""

    layout_id: str
    cols: int
    rows: int
    default_units: str | None = None
    top_level: bool | None = None
    device_size: tuple[float, float] | None = None
    step_size: tuple[float, float] | None = None
    lower_left: tuple[float, float] | None = None
    product_id: str | None = None
    child_layouts: list[str] = field(default_factory=list)


@dataclass
class Substrate:
    """A ``Substrate``: a wafer, frame, strip, tray ... and its lot."""

    substrate_type: str
    substrate_id: str
    lot_id: str | None = None
    slot_number: int | None = None
    good_devices: int | None = None
    supplier_name: str | None = None
    status: str | None = None
    alias_ids: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class BinDefinition:
    """One ``BinDefinition`` (E142) or ``Bin`` (G85)."""

    code: str
    quality: str | None = None
    description: str | None = None
    count: int | None = None
    pick: bool | None = None


@dataclass
class BinCodeMap:
    """Bin codes, one list per array row, top row first."""

    bin_type: str
    null_bin: str
    rows: list[list[str]]
    bins: list[BinDefinition] = field(default_factory=list)
    map_type: str | None = None


@dataclass
class ReferenceDevice:
    """A reference device at file coordinates ``(x, y)``."""

    x: int
    y: int
    name: str | None = None
    position: tuple[float, float] | None = None


@dataclass
class TransferMap:
    """Devices moved from another substrate: ``(fx, fy, tx, ty)`` in file coordinates."""

    from_substrate_type: str
    from_substrate_id: str
    transfers: list[tuple[int, int, int, int]]
    from_layout_specifier: str | None = None


@dataclass
class Overlay:
    """An ``Overlay`` of a substrate map."""

    map_name: str
    map_version: str | None = None
    reference_devices: list[ReferenceDevice] = field(default_factory=list)
    bin_code_map: BinCodeMap | None = None
    device_ids: list[tuple[int, int, str]] | None = None
    transfer_maps: list[TransferMap] = field(default_factory=list)


@dataclass
class SubstrateMap:
    """A ``SubstrateMap``; ``None`` attributes were absent from the file (defaults apply)."""

    substrate_type: str
    substrate_id: str
    layout_specifier: str
    overlays: list[Overlay] = field(default_factory=list)
    substrate_side: str | None = None
    orientation: float | None = None
    origin_location: str | None = None
    axis_direction: str | None = None

    @property
    def origin(self) -> str:
        return self.origin_location or "LowerLeft"

    @property
    def axis(self) -> str:
        return self.axis_direction or "UpRight"

    @property
    def layout_id(self) -> str:
        """The layout this map uses: the last component of ``LayoutSpecifier``."""
        return self.layout_specifier.rstrip("/").split("/")[-1]


@dataclass
class E142Document:
    """A whole ``MapData`` document."""

    layouts: list[Layout] = field(default_factory=list)
    substrates: list[Substrate] = field(default_factory=list)
    substrate_maps: list[SubstrateMap] = field(default_factory=list)
    namespace: str | None = E142_NAMESPACE

    # --- look-ups ----------------------------------------------------------------------------

    def layout(self, layout_id: str) -> Layout | None:
        for layout in self.layouts:
            if layout.layout_id == layout_id:
                return layout
        return None

    def substrate(self, substrate_type: str, substrate_id: str) -> Substrate | None:
        for sub in self.substrates:
            if sub.substrate_type == substrate_type and sub.substrate_id == substrate_id:
                return sub
        return None

    def substrate_map(self, substrate_type: str, substrate_id: str) -> SubstrateMap | None:
        for smap in self.substrate_maps:
            if smap.substrate_type == substrate_type and smap.substrate_id == substrate_id:
                return smap
        return None

    def _lot(self, substrate_type: str, substrate_id: str) -> str | None:
        sub = self.substrate(substrate_type, substrate_id)
        return sub.lot_id if sub is not None else None

    def _indexes(self):
        """Dict look-ups (layouts, lots, maps) for the flattening loops: first entry wins."""
        layouts: dict[str, Layout] = {}
        for la in self.layouts:
            layouts.setdefault(la.layout_id, la)
        lots: dict[tuple[str, str], str | None] = {}
        for sub in self.substrates:
            lots.setdefault((sub.substrate_type, sub.substrate_id), sub.lot_id)
        maps: dict[tuple[str, str], SubstrateMap] = {}
        for smap in self.substrate_maps:
            maps.setdefault((smap.substrate_type, smap.substrate_id), smap)
        return layouts, lots, maps

    # --- flattening --------------------------------------------------------------------------

    def die(self) -> pl.DataFrame:
        """Every non-null device of every BinCodeMap overlay, in canonical coordinates.

        Columns: ``substrate_type``, ``substrate_id``, ``lot_id``, ``map_name``, ``row``, ``col``
        (display cell, 0 = top / left), ``x``, ``y`` (canonical: x right, y up), ``data_x``,
        ``data_y`` (the file's own numbering), ``pos_x``, ``pos_y`` (its axis directions, see
        ``backend_fab.io.maps._grid``), ``bin_code``,
        ``bin`` (numeric value of the code, null for non-numeric ASCII codes), ``bin_quality``
        (from the BinDefinitions, null when undefined), ``device_id`` (from a DeviceIdMap overlay
        of the same substrate map, else null).
        """
        columns: dict[str, list] = {name: [] for name in _DIE_COLUMNS}
        layouts, lots, _ = self._indexes()
        for smap in self.substrate_maps:
            layout = layouts[smap.layout_id]
            ids: dict[tuple[int, int], str] = {}
            for overlay in smap.overlays:
                for fx, fy, value in overlay.device_ids or ():
                    ids[(fx, fy)] = value
            for overlay in smap.overlays:
                bmap = overlay.bin_code_map
                if bmap is None:
                    continue
                part = _grid_columns(
                    bmap,
                    rows=layout.rows,
                    cols=layout.cols,
                    origin=smap.origin,
                    axis=smap.axis,
                    ids=ids,
                    constants={
                        "substrate_type": smap.substrate_type,
                        "substrate_id": smap.substrate_id,
                        "lot_id": lots.get((smap.substrate_type, smap.substrate_id)),
                        "map_name": overlay.map_name,
                    },
                )
                for name, values in part.items():
                    columns[name].extend(values)
        return pl.DataFrame(columns, schema=_DIE_COLUMNS)

    def transfers(self, *, from_axis_direction: str = "UpRight") -> pl.DataFrame:
        """Every ``T`` of every TransferMap, both ends in canonical coordinates.

        ``FX``/``FY`` are in the source map's coordinates: its AxisDirection is taken from the
        source's SubstrateMap when the document has it, else ``from_axis_direction``.
        Columns: ``from_substrate_type``, ``from_substrate_id``, ``from_lot_id``, ``from_x``,
        ``from_y`` (canonical), ``from_data_x``, ``from_data_y`` (``FX``, ``FY`` as written: the
        source map's data coordinates), ``to_substrate_type``, ``to_substrate_id``,
        ``to_lot_id``, ``to_row``, ``to_col`` (display cell of the destination), ``to_x``,
        ``to_y`` (canonical), ``to_data_x``, ``to_data_y`` (``TX``, ``TY``).
        """
        cols: dict[str, list] = {name: [] for name in _TRANSFER_COLUMNS}
        layouts, lots, maps = self._indexes()
        for smap in self.substrate_maps:
            layout = layouts[smap.layout_id]
            tsx, tsy = axis_signs(smap.axis)
            to_lot = lots.get((smap.substrate_type, smap.substrate_id))
            for overlay in smap.overlays:
                for tmap in overlay.transfer_maps:
                    source = maps.get((tmap.from_substrate_type, tmap.from_substrate_id))
                    fsx, fsy = axis_signs(source.axis if source else from_axis_direction)
                    from_lot = lots.get((tmap.from_substrate_type, tmap.from_substrate_id))
                    if not tmap.transfers:
                        continue
                    t = np.asarray(tmap.transfers, dtype=np.int64).reshape(-1, 4)
                    tx, ty = tsx * t[:, 2], tsy * t[:, 3]
                    r, c = canonical_to_cell(tx, ty, layout.rows, layout.cols, smap.origin)
                    n = t.shape[0]
                    cols["from_substrate_type"] += [tmap.from_substrate_type] * n
                    cols["from_substrate_id"] += [tmap.from_substrate_id] * n
                    cols["from_lot_id"] += [from_lot] * n
                    cols["from_x"] += (fsx * t[:, 0]).tolist()
                    cols["from_y"] += (fsy * t[:, 1]).tolist()
                    cols["from_data_x"] += t[:, 0].tolist()
                    cols["from_data_y"] += t[:, 1].tolist()
                    cols["to_substrate_type"] += [smap.substrate_type] * n
                    cols["to_substrate_id"] += [smap.substrate_id] * n
                    cols["to_lot_id"] += [to_lot] * n
                    cols["to_row"] += r.tolist()
                    cols["to_col"] += c.tolist()
                    cols["to_x"] += tx.tolist()
                    cols["to_y"] += ty.tolist()
                    cols["to_data_x"] += t[:, 2].tolist()
                    cols["to_data_y"] += t[:, 3].tolist()
        return pl.DataFrame(cols, schema=_TRANSFER_COLUMNS)

    # --- building ----------------------------------------------------------------------------

    @classmethod
    def from_die(
        cls,
        die: pl.DataFrame,
        *,
        substrate_type: str = "Wafer",
        layout_id: str = "Die",
        origin_location: str = "Center",
        axis_direction: str = "UpRight",
        orientation: float | None = None,
        bin_type: str = "Decimal",
        null_bin: str | None = None,
        bins: list[BinDefinition] | None = None,
        map_name: str = "BinCodeMap",
        step_size: tuple[float, float] | None = None,
        default_units: str | None = None,
        product_id: str | None = None,
    ) -> E142Document:
        """One BinCodeMap per substrate from a die frame.

        ``die`` has ``substrate_id``, ``x``, ``y``, ``bin`` (int) and optionally ``lot_id``,
        ``device_id`` (adds a DeviceIdMap overlay). ``x``/``y`` are the die's coordinates in the
        file's convention: for the lake's ``die`` table, its data coordinates with
        ``axis_direction = _grid.axis_direction(pos_x, pos_y)`` of the wafer; they equal the
        canonical coordinates for ``"UpRight"``. Every substrate shares one layout, sized to hold
        all of them around the chosen origin. Codes are written in ``bin_type`` (Decimal: 3
        digits 000-255; HexaDecimal: 2 hex digits; Integer2: 4 hex digits).
        """
        return _from_die(
            cls,
            die,
            substrate_type=substrate_type,
            layout_id=layout_id,
            origin_location=origin_location,
            axis_direction=axis_direction,
            orientation=orientation,
            bin_type=bin_type,
            null_bin=null_bin,
            bins=bins,
            map_name=map_name,
            step_size=step_size,
            default_units=default_units,
            product_id=product_id,
        )


_TRANSFER_COLUMNS = {
    "from_substrate_type": pl.String,
    "from_substrate_id": pl.String,
    "from_lot_id": pl.String,
    "from_x": pl.Int32,
    "from_y": pl.Int32,
    "from_data_x": pl.Int32,
    "from_data_y": pl.Int32,
    "to_substrate_type": pl.String,
    "to_substrate_id": pl.String,
    "to_lot_id": pl.String,
    "to_row": pl.Int32,
    "to_col": pl.Int32,
    "to_x": pl.Int32,
    "to_y": pl.Int32,
    "to_data_x": pl.Int32,
    "to_data_y": pl.Int32,
}

_DIE_COLUMNS = {
    "substrate_type": pl.String,
    "substrate_id": pl.String,
    "lot_id": pl.String,
    "map_name": pl.String,
    "row": pl.Int32,
    "col": pl.Int32,
    "x": pl.Int32,
    "y": pl.Int32,
    "data_x": pl.Int32,
    "data_y": pl.Int32,
    "pos_x": pl.String,
    "pos_y": pl.String,
    "bin_code": pl.String,
    "bin": pl.Int32,
    "bin_quality": pl.String,
    "device_id": pl.String,
}


def _empty_die() -> pl.DataFrame:
    return pl.DataFrame(schema=_DIE_COLUMNS)


def _grid_columns(
    bmap: BinCodeMap,
    *,
    rows: int,
    cols: int,
    origin: str,
    axis: str,
    ids: dict[tuple[int, int], str],
    constants: dict,
) -> dict[str, list]:
    """The die-frame columns (as lists) of one bin-code array."""
    quality = {b.code: b.quality for b in bmap.bins}
    rr: list[int] = []
    cc: list[int] = []
    codes: list[str] = []
    null = bmap.null_bin
    for r, row in enumerate(bmap.rows):
        for c, code in enumerate(row):
            if code != null:
                rr.append(r)
                cc.append(c)
                codes.append(code)
    x, y = cell_to_canonical(rr, cc, rows, cols, origin)
    sx, sy = axis_signs(axis)
    px, py = pos_flags(axis)
    dx, dy = (sx * x).tolist(), (sy * y).tolist()
    n = len(codes)
    values = {code: code_value(code, bmap.bin_type) for code in set(codes)}
    return {
        **{k: [v] * n for k, v in constants.items()},
        "row": rr,
        "col": cc,
        "x": x.tolist(),
        "y": y.tolist(),
        "data_x": dx,
        "data_y": dy,
        "pos_x": [px] * n,
        "pos_y": [py] * n,
        "bin_code": codes,
        "bin": [values[code] for code in codes],
        "bin_quality": [quality.get(code) for code in codes],
        "device_id": [ids.get(k) for k in zip(dx, dy, strict=True)] if ids else [None] * n,
    }


def _grid_frame(bmap: BinCodeMap, **kw) -> pl.DataFrame:
    return pl.DataFrame(_grid_columns(bmap, **kw), schema=_DIE_COLUMNS)


# --- reading ---------------------------------------------------------------------------------


def _source(source: str | PathLike | bytes, name: str | None = None) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), name or "<bytes>"
    path = Path(source)
    try:
        return path.read_bytes(), name or str(path)
    except OSError as exc:
        raise MapFormatError(f"{path}: cannot read the map file: {exc.strerror}") from None


class _Ctx:
    """Where we are in the file, for messages."""

    def __init__(self, name: str):
        self.name = name

    def error(self, where: str, what: str) -> MapFormatError:
        return MapFormatError(f"{self.name}: {where}: {what}")

    def attr(self, elem: ET.Element, key: str, where: str, *, required: bool = True) -> str | None:
        value = elem.get(key)
        if value is None and required:
            raise self.error(where, f"missing attribute {key!r}")
        return value

    def int_attr(self, elem, key, where, *, required=True) -> int | None:
        value = self.attr(elem, key, where, required=required)
        if value is None:
            return None
        try:
            return int(value.strip())
        except ValueError:
            raise self.error(where, f"attribute {key}={value!r} is not an integer") from None

    def float_attr(self, elem, key, where, *, required=True) -> float | None:
        value = self.attr(elem, key, where, required=required)
        if value is None:
            return None
        try:
            return float(value.strip())
        except ValueError:
            raise self.error(where, f"attribute {key}={value!r} is not a number") from None

    def xy(self, elem, where, *, kind=float) -> tuple | None:
        if elem is None:
            return None
        get = self.float_attr if kind is float else self.int_attr
        return (get(elem, "X", where), get(elem, "Y", where))

    def text(self, elem: ET.Element | None) -> str | None:
        return None if elem is None else (elem.text or "").strip()

    def int_text(self, elem, where) -> int | None:
        value = self.text(elem)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise self.error(where, f"{value!r} is not an integer") from None


def _bool(value: str | None) -> bool | None:
    if value is None:
        return None
    return value.strip().lower() in ("true", "1", "yes")


def read_e142(source: str | PathLike | bytes, *, name: str | None = None) -> E142Document:
    """Read a SEMI E142 XML file (path or bytes) into an :class:`E142Document`.

    ``name`` is what error messages call the source (default: the path, or ``<bytes>``).

    Validates what the flattening relies on and raises :class:`MapFormatError` naming the file,
    the element path and the attribute at fault: a LayoutSpecifier that names no Layout, a
    BinCodeMap whose row count or row length disagrees with the layout ``Dimension``, a transfer
    whose ``TX``/``TY`` falls outside this substrate or whose ``FX``/``FY`` points to no device
    of a source substrate mapped in the same file, two devices transferred to one position, an
    unknown OriginLocation / AxisDirection / BinType. DTDs and entities are refused.
    """
    data, name = _source(source, name)
    xml = parse_xml(data, name)
    ctx = _Ctx(name)
    root = xml.root
    if root.tag != "MapData":
        raise ctx.error(root.tag, "the root element is not <MapData>: not a SEMI E142 file")
    doc = E142Document(namespace=xml.namespace)
    layouts_elem = child(root, "Layouts")
    for i, el in enumerate(children(layouts_elem, "Layout") if layouts_elem is not None else []):
        doc.layouts.append(_read_layout(ctx, el, f"Layouts/Layout[{i + 1}]"))
    subs_elem = child(root, "Substrates")
    for i, el in enumerate(children(subs_elem, "Substrate") if subs_elem is not None else []):
        doc.substrates.append(_read_substrate(ctx, el, f"Substrates/Substrate[{i + 1}]"))
    maps_elem = child(root, "SubstrateMaps")
    for i, el in enumerate(children(maps_elem, "SubstrateMap") if maps_elem is not None else []):
        doc.substrate_maps.append(
            _read_substrate_map(ctx, el, f"SubstrateMaps/SubstrateMap[{i + 1}]")
        )
    _check(ctx, doc)
    return doc


def _read_layout(ctx: _Ctx, el: ET.Element, where: str) -> Layout:
    layout_id = ctx.attr(el, "LayoutId", where)
    where = f"{where} (LayoutId {layout_id!r})"
    dim = child(el, "Dimension")
    if dim is None:
        raise ctx.error(where, "missing <Dimension X=... Y=...>")
    cols, rows = ctx.xy(dim, f"{where}/Dimension", kind=int)
    if cols < 1 or rows < 1:
        raise ctx.error(f"{where}/Dimension", f"X={cols}, Y={rows}: both must be >= 1")
    child_layouts = []
    cl = child(el, "ChildLayouts")
    if cl is not None:
        for j, c in enumerate(children(cl, "ChildLayout")):
            child_layouts.append(
                ctx.attr(c, "LayoutId", f"{where}/ChildLayouts/ChildLayout[{j + 1}]")
            )
    return Layout(
        layout_id=layout_id,
        cols=cols,
        rows=rows,
        default_units=el.get("DefaultUnits"),
        top_level=_bool(el.get("TopLevel")),
        device_size=ctx.xy(child(el, "DeviceSize"), f"{where}/DeviceSize"),
        step_size=ctx.xy(child(el, "StepSize"), f"{where}/StepSize"),
        lower_left=ctx.xy(child(el, "LowerLeft"), f"{where}/LowerLeft"),
        product_id=ctx.text(child(el, "ProductId")),
        child_layouts=child_layouts,
    )


def _read_substrate(ctx: _Ctx, el: ET.Element, where: str) -> Substrate:
    aliases = []
    ae = child(el, "AliasIds")
    if ae is not None:
        for j, a in enumerate(children(ae, "AliasId")):
            w = f"{where}/AliasIds/AliasId[{j + 1}]"
            aliases.append((ctx.attr(a, "Type", w), ctx.attr(a, "Value", w)))
    return Substrate(
        substrate_type=ctx.attr(el, "SubstrateType", where),
        substrate_id=ctx.attr(el, "SubstrateId", where),
        lot_id=ctx.text(child(el, "LotId")),
        slot_number=ctx.int_text(child(el, "SlotNumber"), f"{where}/SlotNumber"),
        good_devices=ctx.int_text(child(el, "GoodDevices"), f"{where}/GoodDevices"),
        supplier_name=ctx.text(child(el, "SupplierName")),
        status=ctx.text(child(el, "Status")),
        alias_ids=aliases,
    )


def _read_substrate_map(ctx: _Ctx, el: ET.Element, where: str) -> SubstrateMap:
    smap = SubstrateMap(
        substrate_type=ctx.attr(el, "SubstrateType", where),
        substrate_id=ctx.attr(el, "SubstrateId", where),
        layout_specifier=ctx.attr(el, "LayoutSpecifier", where),
        substrate_side=el.get("SubstrateSide"),
        orientation=ctx.float_attr(el, "Orientation", where, required=False),
        origin_location=el.get("OriginLocation"),
        axis_direction=el.get("AxisDirection"),
    )
    where = f"{where} ({smap.substrate_type} {smap.substrate_id!r})"
    origin_cell(smap.origin, 1, 1, f"{ctx.name}: {where}")
    axis_signs(smap.axis, f"{ctx.name}: {where}")
    for j, ov in enumerate(children(el, "Overlay")):
        smap.overlays.append(_read_overlay(ctx, ov, f"{where}/Overlay[{j + 1}]"))
    return smap


def _read_overlay(ctx: _Ctx, el: ET.Element, where: str) -> Overlay:
    overlay = Overlay(map_name=ctx.attr(el, "MapName", where), map_version=el.get("MapVersion"))
    refs = child(el, "ReferenceDevices")
    if refs is not None:
        for k, rd in enumerate(children(refs, "ReferenceDevice")):
            w = f"{where}/ReferenceDevices/ReferenceDevice[{k + 1}]"
            coords = child(rd, "Coordinates")
            if coords is None:
                raise ctx.error(w, "missing <Coordinates X=... Y=...>")
            x, y = ctx.xy(coords, f"{w}/Coordinates", kind=int)
            overlay.reference_devices.append(
                ReferenceDevice(
                    x=x,
                    y=y,
                    name=rd.get("Name"),
                    position=ctx.xy(child(rd, "Position"), f"{w}/Position"),
                )
            )
    bcm = child(el, "BinCodeMap")
    if bcm is not None:
        overlay.bin_code_map = _read_bin_code_map(ctx, bcm, f"{where}/BinCodeMap")
    dim = child(el, "DeviceIdMap")
    if dim is not None:
        overlay.device_ids = []
        holder = child(dim, "DeviceIds")
        for k, d in enumerate(children(holder, "DeviceId") if holder is not None else []):
            w = f"{where}/DeviceIdMap/DeviceIds/DeviceId[{k + 1}]"
            overlay.device_ids.append(
                (ctx.int_attr(d, "X", w), ctx.int_attr(d, "Y", w), (d.text or "").strip())
            )
    for k, tm in enumerate(children(el, "TransferMap")):
        w = f"{where}/TransferMap[{k + 1}]"
        transfers = []
        for m, t in enumerate(children(tm, "T")):
            wt = f"{w}/T[{m + 1}]"
            transfers.append(
                (
                    ctx.int_attr(t, "FX", wt),
                    ctx.int_attr(t, "FY", wt),
                    ctx.int_attr(t, "TX", wt),
                    ctx.int_attr(t, "TY", wt),
                )
            )
        overlay.transfer_maps.append(
            TransferMap(
                from_substrate_type=ctx.attr(tm, "FromSubstrateType", w),
                from_substrate_id=ctx.attr(tm, "FromSubstrateId", w),
                transfers=transfers,
                from_layout_specifier=tm.get("FromLayoutSpecifier")
                or tm.get("FromSubstrateLayoutSpecifier"),
            )
        )
    return overlay


def _read_bin_code_map(ctx: _Ctx, el: ET.Element, where: str) -> BinCodeMap:
    bin_type = normalise_bin_type(ctx.attr(el, "BinType", where), f"{ctx.name}: {where}")
    null_bin = ctx.attr(el, "NullBin", where)
    bins = []
    defs = child(el, "BinDefinitions")
    if defs is not None:
        for k, b in enumerate(children(defs, "BinDefinition")):
            w = f"{where}/BinDefinitions/BinDefinition[{k + 1}]"
            quality = b.get("BinQuality")
            if quality is not None and quality not in BIN_QUALITIES:
                raise ctx.error(
                    w, f"BinQuality {quality!r} is not one of {', '.join(BIN_QUALITIES)}"
                )
            bins.append(
                BinDefinition(
                    code=ctx.attr(b, "BinCode", w),
                    quality=quality,
                    description=b.get("BinDescription"),
                    count=ctx.int_attr(b, "BinCount", w, required=False),
                    pick=_bool(b.get("Pick")),
                )
            )
    rows = []
    for k, bc in enumerate(children(el, "BinCode")):
        w = f"{where}/BinCode[{k + 1}]"
        if bc.get("X") is not None or bc.get("Y") is not None or bc.get("Number") is not None:
            raise ctx.error(
                w,
                "BinCode rows with X/Y/Number attributes (sparse maps) are not supported; "
                "write one BinCode element per full row",
            )
        rows.append(split_row(bc.text or "", bin_type, f"{ctx.name}: {w}"))
    return BinCodeMap(
        bin_type=bin_type, null_bin=null_bin, rows=rows, bins=bins, map_type=el.get("MapType")
    )


def _check(ctx: _Ctx, doc: E142Document) -> None:
    """Cross-element checks: layouts exist, arrays fit them, transfers hit real devices."""
    occupied: dict[tuple[str, str], np.ndarray] = {}
    layouts, _, maps = doc._indexes()
    for i, smap in enumerate(doc.substrate_maps):
        where = f"SubstrateMaps/SubstrateMap[{i + 1}] ({smap.substrate_type} {smap.substrate_id!r})"
        layout = layouts.get(smap.layout_id)
        if layout is None:
            raise ctx.error(
                where,
                f"LayoutSpecifier {smap.layout_specifier!r} names no Layout (known: "
                f"{', '.join(repr(la.layout_id) for la in doc.layouts) or 'none'})",
            )
        for j, overlay in enumerate(smap.overlays):
            bmap = overlay.bin_code_map
            if bmap is None:
                continue
            w = f"{where}/Overlay[{j + 1}]/BinCodeMap"
            if len(bmap.rows) != layout.rows:
                raise ctx.error(
                    w,
                    f"{len(bmap.rows)} BinCode rows but Layout {layout.layout_id!r} has Dimension "
                    f"Y={layout.rows}",
                )
            for k, row in enumerate(bmap.rows):
                if len(row) != layout.cols:
                    raise ctx.error(
                        f"{w}/BinCode[{k + 1}]",
                        f"{len(row)} codes but Layout {layout.layout_id!r} has Dimension "
                        f"X={layout.cols}",
                    )
            key = (smap.substrate_type, smap.substrate_id)
            mask = np.array(
                [[code != bmap.null_bin for code in row] for row in bmap.rows], dtype=bool
            )
            occupied[key] = mask if key not in occupied else occupied[key] | mask
    for i, smap in enumerate(doc.substrate_maps):
        where = f"SubstrateMaps/SubstrateMap[{i + 1}] ({smap.substrate_type} {smap.substrate_id!r})"
        layout = layouts[smap.layout_id]
        tsx, tsy = axis_signs(smap.axis)
        seen: dict[tuple[int, int], str] = {}
        for j, overlay in enumerate(smap.overlays):
            for k, tmap in enumerate(overlay.transfer_maps):
                w = f"{where}/Overlay[{j + 1}]/TransferMap[{k + 1}]"
                if not tmap.transfers:
                    continue
                t = np.asarray(tmap.transfers, dtype=np.int64).reshape(-1, 4)
                r, c = canonical_to_cell(
                    tsx * t[:, 2], tsy * t[:, 3], layout.rows, layout.cols, smap.origin
                )
                bad = np.flatnonzero((r < 0) | (r >= layout.rows) | (c < 0) | (c >= layout.cols))
                if bad.size:
                    m = int(bad[0])
                    raise ctx.error(
                        f"{w}/T[{m + 1}]",
                        f"TX={t[m, 2]} TY={t[m, 3]} lies outside {smap.substrate_type} "
                        f"{smap.substrate_id!r} ({layout.cols} x {layout.rows} layout "
                        f"{layout.layout_id!r})",
                    )
                for m, cell in enumerate(zip(r.tolist(), c.tolist(), strict=True)):
                    if cell in seen:
                        raise ctx.error(
                            f"{w}/T[{m + 1}]",
                            f"TX={t[m, 2]} TY={t[m, 3]} already receives a device ({seen[cell]}); "
                            "a position holds one device",
                        )
                    seen[cell] = f"T {tmap.from_substrate_id} FX={t[m, 0]} FY={t[m, 1]}"
                source = maps.get((tmap.from_substrate_type, tmap.from_substrate_id))
                if source is None:
                    continue
                src_layout = layouts[source.layout_id]
                src_mask = occupied.get((tmap.from_substrate_type, tmap.from_substrate_id))
                fsx, fsy = axis_signs(source.axis)
                sr, sc = canonical_to_cell(
                    fsx * t[:, 0], fsy * t[:, 1], src_layout.rows, src_layout.cols, source.origin
                )
                inside = (sr >= 0) & (sr < src_layout.rows) & (sc >= 0) & (sc < src_layout.cols)
                hit = inside.copy()
                if src_mask is not None:
                    hit[inside] = src_mask[sr[inside], sc[inside]]
                bad = np.flatnonzero(~hit)
                if bad.size:
                    m = int(bad[0])
                    raise ctx.error(
                        f"{w}/T[{m + 1}]",
                        f"FX={t[m, 0]} FY={t[m, 1]} points to no device of "
                        f"{tmap.from_substrate_type} {tmap.from_substrate_id!r} "
                        + (
                            "(a null-bin position of its map)"
                            if inside[m]
                            else f"(outside its {src_layout.cols} x {src_layout.rows} layout)"
                        ),
                    )


# --- writing ---------------------------------------------------------------------------------


def _num(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _sub(parent: ET.Element, tag: str, attrs: dict | None = None, text: str | None = None):
    el = ET.SubElement(parent, tag, {k: v for k, v in (attrs or {}).items() if v is not None})
    if text is not None:
        el.text = text
    return el


def _xy(parent: ET.Element, tag: str, value: tuple | None) -> None:
    if value is not None:
        _sub(parent, tag, {"X": _num(value[0]), "Y": _num(value[1])})


def _flag(value: bool | None) -> str | None:
    return None if value is None else ("true" if value else "false")


def write_e142(doc: E142Document, dest: str | PathLike | None = None) -> bytes:
    """Serialise ``doc`` as SEMI E142 XML (UTF-8); write it to ``dest`` when given.

    The document's own conventions (OriginLocation, AxisDirection, Orientation, BinType) are
    written as they are; attributes that are ``None`` are left out, so ``read_e142`` of the
    result equals ``doc``.
    """
    root = ET.Element("MapData")
    if doc.layouts:
        layouts = _sub(root, "Layouts")
        for la in doc.layouts:
            el = _sub(
                layouts,
                "Layout",
                {
                    "LayoutId": la.layout_id,
                    "DefaultUnits": la.default_units,
                    "TopLevel": _flag(la.top_level),
                },
            )
            _sub(el, "Dimension", {"X": str(la.cols), "Y": str(la.rows)})
            _xy(el, "DeviceSize", la.device_size)
            _xy(el, "StepSize", la.step_size)
            _xy(el, "LowerLeft", la.lower_left)
            if la.product_id is not None:
                _sub(el, "ProductId", text=la.product_id)
            if la.child_layouts:
                holder = _sub(el, "ChildLayouts")
                for cid in la.child_layouts:
                    _sub(holder, "ChildLayout", {"LayoutId": cid})
    if doc.substrates:
        subs = _sub(root, "Substrates")
        for s in doc.substrates:
            el = _sub(
                subs,
                "Substrate",
                {"SubstrateType": s.substrate_type, "SubstrateId": s.substrate_id},
            )
            if s.alias_ids:
                holder = _sub(el, "AliasIds")
                for kind, value in s.alias_ids:
                    _sub(holder, "AliasId", {"Type": kind, "Value": value})
            for tag, value in (
                ("LotId", s.lot_id),
                ("SlotNumber", s.slot_number),
                ("GoodDevices", s.good_devices),
                ("SupplierName", s.supplier_name),
                ("Status", s.status),
            ):
                if value is not None:
                    _sub(el, tag, text=str(value))
    if doc.substrate_maps:
        maps = _sub(root, "SubstrateMaps")
        for sm in doc.substrate_maps:
            el = _sub(
                maps,
                "SubstrateMap",
                {
                    "SubstrateType": sm.substrate_type,
                    "SubstrateId": sm.substrate_id,
                    "LayoutSpecifier": sm.layout_specifier,
                    "SubstrateSide": sm.substrate_side,
                    "Orientation": None if sm.orientation is None else _num(sm.orientation),
                    "OriginLocation": sm.origin_location,
                    "AxisDirection": sm.axis_direction,
                },
            )
            for ov in sm.overlays:
                _write_overlay(el, ov)
    data = serialize_xml(root, doc.namespace)
    if dest is not None:
        Path(dest).write_bytes(data)
    return data


def _write_overlay(parent: ET.Element, ov: Overlay) -> None:
    el = _sub(parent, "Overlay", {"MapName": ov.map_name, "MapVersion": ov.map_version})
    if ov.reference_devices:
        holder = _sub(el, "ReferenceDevices")
        for rd in ov.reference_devices:
            r = _sub(holder, "ReferenceDevice", {"Name": rd.name})
            _sub(r, "Coordinates", {"X": str(rd.x), "Y": str(rd.y)})
            _xy(r, "Position", rd.position)
    if ov.bin_code_map is not None:
        b = ov.bin_code_map
        bel = _sub(
            el, "BinCodeMap", {"BinType": b.bin_type, "NullBin": b.null_bin, "MapType": b.map_type}
        )
        if b.bins:
            defs = _sub(bel, "BinDefinitions")
            for d in b.bins:
                _sub(
                    defs,
                    "BinDefinition",
                    {
                        "BinCode": d.code,
                        "BinCount": None if d.count is None else str(d.count),
                        "BinQuality": d.quality,
                        "BinDescription": d.description,
                        "Pick": _flag(d.pick),
                    },
                )
        for row in b.rows:
            _sub(bel, "BinCode", text=join_row(row, b.bin_type))
    if ov.device_ids is not None:
        dm = _sub(el, "DeviceIdMap")
        holder = _sub(dm, "DeviceIds")
        for x, y, value in ov.device_ids:
            _sub(holder, "DeviceId", {"X": str(x), "Y": str(y)}, text=value)
    for tm in ov.transfer_maps:
        tel = _sub(
            el,
            "TransferMap",
            {
                "FromSubstrateType": tm.from_substrate_type,
                "FromSubstrateId": tm.from_substrate_id,
                "FromLayoutSpecifier": tm.from_layout_specifier,
            },
        )
        for fx, fy, tx, ty in tm.transfers:
            _sub(tel, "T", {"FX": str(fx), "FY": str(fy), "TX": str(tx), "TY": str(ty)})


# --- building from frames --------------------------------------------------------------------


def _format_code(value: int, bin_type: str) -> str:
    if bin_type == "Decimal":
        return f"{value:03d}"
    if bin_type == "HexaDecimal":
        return f"{value:02X}"
    if bin_type == "Integer2":
        return f"{value:04X}"
    return str(value)


def _from_die(cls, die: pl.DataFrame, **kw) -> E142Document:
    origin = kw["origin_location"]
    axis = kw["axis_direction"]
    bin_type = normalise_bin_type(kw["bin_type"], "E142Document.from_die")
    limits = {"Decimal": 255, "HexaDecimal": 255, "Integer2": 65535, "ASCII": 9}
    for col in ("substrate_id", "x", "y", "bin"):
        if col not in die.columns:
            raise MapFormatError(f"E142Document.from_die: the die frame has no column {col!r}")
    if die.get_column("bin").null_count():
        raise MapFormatError("E142Document.from_die: column 'bin' has nulls; every die needs a bin")
    top = limits[bin_type]
    null_bin = kw["null_bin"] or _format_code(top, bin_type)
    bmax = int(die.get_column("bin").max()) if die.height else 0
    if die.height and (bmax >= top or int(die.get_column("bin").min()) < 0):
        raise MapFormatError(
            f"E142Document.from_die: bins span {int(die.get_column('bin').min())}..{bmax}; "
            f"BinType {bin_type} holds 0..{top - 1} plus the null bin {null_bin}: choose a wider "
            "BinType (Integer2)"
        )
    sx, sy = axis_signs(axis, "E142Document.from_die")
    die = die.with_columns(
        (pl.col("x").cast(pl.Int64) * sx).alias("_cx"),
        (pl.col("y").cast(pl.Int64) * sy).alias("_cy"),
    )
    rows, cols = fit_array(
        die.get_column("_cx").to_numpy(),
        die.get_column("_cy").to_numpy(),
        origin,
        "E142Document.from_die",
    )
    layout_id = kw["layout_id"]
    doc = cls(
        layouts=[
            Layout(
                layout_id=layout_id,
                cols=cols,
                rows=rows,
                default_units=kw["default_units"],
                step_size=kw["step_size"],
                product_id=kw["product_id"],
            )
        ]
    )
    for (sub_id,), part in die.group_by(["substrate_id"], maintain_order=True):
        grid = [[null_bin] * cols for _ in range(rows)]
        r, c = canonical_to_cell(
            part.get_column("_cx").to_numpy(), part.get_column("_cy").to_numpy(), rows, cols, origin
        )
        if len(set(zip(r.tolist(), c.tolist(), strict=True))) != part.height:
            raise MapFormatError(
                f"E142Document.from_die: substrate {sub_id!r} has two die at one (x, y)"
            )
        for rr, cc, b in zip(r.tolist(), c.tolist(), part.get_column("bin").to_list(), strict=True):
            grid[rr][cc] = _format_code(int(b), bin_type)
        lot = part.get_column("lot_id")[0] if "lot_id" in part.columns else None
        doc.substrates.append(
            Substrate(substrate_type=kw["substrate_type"], substrate_id=sub_id, lot_id=lot)
        )
        overlays = [
            Overlay(
                map_name=kw["map_name"],
                bin_code_map=BinCodeMap(
                    bin_type=bin_type,
                    null_bin=null_bin,
                    rows=grid,
                    bins=[
                        BinDefinition(
                            code=b.code,
                            quality=b.quality,
                            description=b.description,
                            count=b.count,
                            pick=b.pick,
                        )
                        for b in (kw["bins"] or [])
                    ],
                ),
            )
        ]
        if "device_id" in part.columns:
            ids = [
                (int(x), int(y), str(v))
                for x, y, v in part.select("x", "y", "device_id").iter_rows()
                if v is not None
            ]
            overlays.append(Overlay(map_name="DeviceIdMap", device_ids=ids))
        doc.substrate_maps.append(
            SubstrateMap(
                substrate_type=kw["substrate_type"],
                substrate_id=sub_id,
                layout_specifier=layout_id,
                overlays=overlays,
                orientation=kw["orientation"],
                origin_location=origin,
                axis_direction=axis,
            )
        )
    return doc
