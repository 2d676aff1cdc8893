"""SEMI G85 wafer maps: the XML form (``Maps/Map/Device``) and a line-oriented ASCII form.

XML (SEMI G85-0703; element and attribute names checked against the artwork.com G85 description
and the ``g85`` package, used as a test oracle): ``Map`` (``xmlns``, ``FormatRevision``,
``SubstrateType``, ``SubstrateId``; older revisions ``WaferId``) holds ``Device`` elements
(``ProductId``, ``LotId``, ``WaferSize``, ``CreateDate``, ``DeviceSizeX``/``Y``,
``SupplierName``, ``Rows``, ``Columns``, ``Orientation``, ``OriginLocation``, ``BinType``,
``NullBin``, ``MapType``) with ``ReferenceDevice`` (``ReferenceDeviceX``/``Y``), ``Bin``
(``BinCode``, ``BinCount``, ``BinQuality``, ``BinDescription``), ``SupplierData`` and ``Data``
(``MapName``, ``MapVersion``) whose ``Row`` elements hold one array row each, top row first
(codes separated by spaces, ASCII codes written without separators; both forms are read).

The ASCII form [U: the G85 ASCII layout is not confirmed in a primary source; this reader takes
the same data items as lines]: ``Name: value`` (or ``Name = value``) header lines using the G85
data-item names (``SubstrateId``, ``LotId``, ``Rows``, ``Columns``, ``BinType``, ``NullBin``,
``OriginLocation`` ...; ``WAFER_ID``-style spellings are accepted), ``Bin: <code> <count>
<quality> [description]`` and ``ReferenceDevice: <x> <y>`` lines, then a ``Data:`` line followed
by one line per row. :func:`write_g85` with ``ascii=True`` writes this form.

``OriginLocation`` is an integer in G85 [U]: by default 0 = Center, 1 = UpperRight, 2 = UpperLeft,
3 = LowerLeft, 4 = LowerRight (quadrant numbering; override with ``origin_codes``), UpperLeft when
absent; the axes grow away from the origin corner (right and up from a centre origin).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import polars as pl

from backend_fab.errors import MapFormatError
from backend_fab.io.maps._grid import (
    axis_away_from,
    join_row,
    normalise_bin_type,
    origin_cell,
    split_row,
)
from backend_fab.io.maps._xml import XMLNS, child, children, parse_xml, serialize_xml
from backend_fab.io.maps.e142 import BinCodeMap, BinDefinition, _empty_die, _grid_frame, _source

__all__ = ["G85_NAMESPACE", "G85_ORIGIN_CODES", "G85Map", "read_g85", "write_g85"]

G85_NAMESPACE = "http://www.semi.org"

#: G85 integer OriginLocation -> origin corner [U]; see the module docstring.
G85_ORIGIN_CODES = {0: "Center", 1: "UpperRight", 2: "UpperLeft", 3: "LowerLeft", 4: "LowerRight"}

#: Device attributes with a typed field of their own (everything else stays in ``device_attrs``).
_DEVICE_TYPED = ("Rows", "Columns", "BinType", "NullBin")


@dataclass
class G85Map:
    """One G85 ``Map`` with its single ``Device``.

    ``rows`` are the codes of each array row, top row first. ``map_attrs`` / ``device_attrs`` /
    ``data_attrs`` / ``supplier_data`` keep the file's attributes in file order (``Rows`` and
    ``Columns`` are checked against ``rows`` and rewritten from it).
    """

    rows: list[list[str]]
    bin_type: str = "Decimal"
    null_bin: str = "255"
    bins: list[BinDefinition] = field(default_factory=list)
    map_attrs: dict[str, str] = field(default_factory=dict)
    device_attrs: dict[str, str] = field(default_factory=dict)
    reference_devices: list[tuple[int, int]] = field(default_factory=list)
    data_attrs: dict[str, str] = field(default_factory=dict)
    supplier_data: dict[str, str] = field(default_factory=dict)
    namespace: str | None = G85_NAMESPACE

    @property
    def n_rows(self) -> int:
        return len(self.rows)

    @property
    def n_cols(self) -> int:
        return len(self.rows[0]) if self.rows else 0

    @property
    def substrate_id(self) -> str | None:
        return self.map_attrs.get("SubstrateId", self.map_attrs.get("WaferId"))

    @property
    def substrate_type(self) -> str:
        return self.map_attrs.get("SubstrateType", "Wafer")

    @property
    def lot_id(self) -> str | None:
        return self.device_attrs.get("LotId")

    def origin(self, origin_codes: dict[int, str] | None = None, default: str = "UpperLeft") -> str:
        """The origin corner named by ``OriginLocation`` (see the module docstring)."""
        value = self.device_attrs.get("OriginLocation")
        if value is None or value.strip() == "":
            return default
        codes = G85_ORIGIN_CODES if origin_codes is None else origin_codes
        try:
            return codes[int(float(value))]
        except (ValueError, KeyError):
            raise MapFormatError(
                f"G85 map {self.substrate_id!r}: OriginLocation {value!r} is not one of "
                f"{sorted(codes)}"
            ) from None

    def die(
        self, *, origin_codes: dict[int, str] | None = None, default_origin: str = "UpperLeft"
    ) -> pl.DataFrame:
        """Non-null devices (columns as :meth:`E142Document.die`); data coordinates grow away
        from the origin corner (G85 has no AxisDirection)."""
        origin = self.origin(origin_codes, default_origin)
        origin_cell(origin, 1, 1)
        axis = axis_away_from(origin)
        bmap = BinCodeMap(
            bin_type=self.bin_type, null_bin=self.null_bin, rows=self.rows, bins=self.bins
        )
        if not self.rows:
            return _empty_die()
        return _grid_frame(
            bmap,
            rows=self.n_rows,
            cols=self.n_cols,
            origin=origin,
            axis=axis,
            ids={},
            constants={
                "substrate_type": self.substrate_type,
                "substrate_id": self.substrate_id,
                "lot_id": self.lot_id,
                "map_name": self.data_attrs.get("MapName", "G85"),
            },
        )


# --- reading ---------------------------------------------------------------------------------


def read_g85(source: str | PathLike | bytes, *, name: str | None = None) -> list[G85Map]:
    """Read a G85 file, XML or ASCII (detected from the content), into a list of maps.

    ``name`` is what error messages call the source (default: the path, or ``<bytes>``).

    Raises :class:`MapFormatError` naming the file and the element / line at fault: ``Rows`` or
    ``Columns`` that disagree with the data, ragged rows, unknown BinType, a DTD or entity.
    """
    data, name = _source(source, name)
    head = data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if head == b"<":
        return _read_xml(data, name)
    return [_read_ascii(data, name)]


def _int(value: str, where: str, key: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise MapFormatError(f"{where}: {key}={value!r} is not an integer") from None


def _check_dims(m: G85Map, rows_attr, cols_attr, where: str, row_where) -> None:
    if rows_attr is not None and _int(rows_attr, where, "Rows") != len(m.rows):
        raise MapFormatError(f"{where}: Rows={rows_attr} but the data has {len(m.rows)} rows")
    width = (
        _int(cols_attr, where, "Columns")
        if cols_attr is not None
        else (len(m.rows[0]) if m.rows else 0)
    )
    for k, row in enumerate(m.rows):
        if len(row) != width:
            raise MapFormatError(
                f"{row_where(k)}: {len(row)} codes but "
                + (f"Columns={cols_attr}" if cols_attr is not None else f"row 1 has {width}")
            )


def _read_xml(data: bytes, name: str) -> list[G85Map]:
    doc = parse_xml(data, name)
    root = doc.root
    if root.tag == "Maps":
        map_elems = children(root, "Map")
        root_ns = doc.namespace
    elif root.tag == "Map":
        map_elems = [root]
        root_ns = None
        root.attrib.setdefault(XMLNS, doc.namespace or "")
    else:
        raise MapFormatError(
            f"{name}: root element <{root.tag}> is neither <Maps> nor <Map>: not G85"
        )
    out = []
    for i, mel in enumerate(map_elems):
        where = f"{name}: Map[{i + 1}]"
        dev = child(mel, "Device")
        if dev is None:
            raise MapFormatError(f"{where}: missing <Device>")
        wd = f"{where}/Device"
        attrs = dict(dev.attrib)
        for key in ("BinType", "NullBin"):
            if key not in attrs:
                raise MapFormatError(f"{wd}: missing attribute {key!r}")
        bin_type = normalise_bin_type(attrs["BinType"], wd)
        ns = mel.attrib.get(XMLNS, root_ns)
        m = G85Map(
            rows=[],
            bin_type=bin_type,
            null_bin=attrs["NullBin"].strip(),
            map_attrs={k: v for k, v in mel.attrib.items() if k != XMLNS},
            device_attrs={k: v for k, v in attrs.items() if k not in _DEVICE_TYPED},
            namespace=ns or None,
        )
        for k, ref in enumerate(children(dev, "ReferenceDevice")):
            w = f"{wd}/ReferenceDevice[{k + 1}]"
            m.reference_devices.append(
                (
                    _int(ref.get("ReferenceDeviceX", ""), w, "ReferenceDeviceX"),
                    _int(ref.get("ReferenceDeviceY", ""), w, "ReferenceDeviceY"),
                )
            )
        for k, b in enumerate(children(dev, "Bin")):
            w = f"{wd}/Bin[{k + 1}]"
            if b.get("BinCode") is None:
                raise MapFormatError(f"{w}: missing attribute 'BinCode'")
            count = b.get("BinCount")
            m.bins.append(
                BinDefinition(
                    code=b.get("BinCode"),
                    quality=b.get("BinQuality"),
                    description=b.get("BinDescription"),
                    count=None if count is None else _int(count, w, "BinCount"),
                )
            )
        sd = child(dev, "SupplierData")
        if sd is not None:
            m.supplier_data = dict(sd.attrib)
        data_el = child(dev, "Data")
        if data_el is None:
            raise MapFormatError(f"{wd}: missing <Data> (the map rows)")
        m.data_attrs = dict(data_el.attrib)
        for k, row in enumerate(children(data_el, "Row")):
            m.rows.append(split_row(row.text or "", bin_type, f"{wd}/Data/Row[{k + 1}]"))
        _check_dims(
            m,
            attrs.get("Rows"),
            attrs.get("Columns"),
            wd,
            lambda k, wd=wd: f"{wd}/Data/Row[{k + 1}]",
        )
        out.append(m)
    return out


_ASCII_KEYS = {
    "substrateid": ("map", "SubstrateId"),
    "waferid": ("map", "SubstrateId"),
    "substratetype": ("map", "SubstrateType"),
    "formatrevision": ("map", "FormatRevision"),
    "rows": ("dim", "Rows"),
    "rowcount": ("dim", "Rows"),
    "columns": ("dim", "Columns"),
    "colcount": ("dim", "Columns"),
    "columncount": ("dim", "Columns"),
    "bintype": ("typed", "BinType"),
    "nullbin": ("typed", "NullBin"),
    "mapname": ("data", "MapName"),
    "mapversion": ("data", "MapVersion"),
}
_DEVICE_NAMES = (
    "ProductId",
    "LotId",
    "WaferSize",
    "CreateDate",
    "DeviceSizeX",
    "DeviceSizeY",
    "SupplierName",
    "Orientation",
    "OriginLocation",
    "MapType",
)
_ASCII_KEYS |= {n.lower(): ("device", n) for n in _DEVICE_NAMES}
_ASCII_KEYS |= {"deviceid": ("device", "ProductId"), "productid": ("device", "ProductId")}


def _read_ascii(data: bytes, name: str) -> G85Map:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MapFormatError(
            f"{name}: byte offset {exc.start}: not UTF-8 text, not a G85 map"
        ) from None
    lines = text.splitlines()
    m = G85Map(rows=[], namespace=G85_NAMESPACE)
    dims: dict[str, str] = {}
    typed: dict[str, str] = {}
    data_line = None
    for ln, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = _split_key(stripped)
        if sep is None:
            raise MapFormatError(
                f"{name}: line {ln}: expected 'Name: value', got {stripped[:40]!r}"
            )
        norm = key.replace("_", "").replace(" ", "").lower()
        if norm == "data":
            data_line = ln
            break
        if norm == "bin":
            parts = value.split(None, 3)
            if len(parts) < 1:
                raise MapFormatError(
                    f"{name}: line {ln}: Bin needs '<code> [count] [quality] [description]'"
                )
            count = parts[1] if len(parts) > 1 and parts[1] != "-" else None
            quality = parts[2] if len(parts) > 2 and parts[2] != "-" else None
            m.bins.append(
                BinDefinition(
                    code=parts[0],
                    count=None if count is None else _int(count, f"{name}: line {ln}", "BinCount"),
                    quality=quality,
                    description=parts[3] if len(parts) > 3 else None,
                )
            )
            continue
        if norm == "referencedevice":
            parts = value.split()
            if len(parts) != 2:
                raise MapFormatError(f"{name}: line {ln}: ReferenceDevice needs '<x> <y>'")
            w = f"{name}: line {ln}"
            m.reference_devices.append((_int(parts[0], w, "x"), _int(parts[1], w, "y")))
            continue
        prefix, dot, rest = key.partition(".")
        if dot and prefix in ("Map", "Device", "Data", "SupplierData"):
            kind = {"Map": "map", "Device": "device", "Data": "data", "SupplierData": "supplier"}
            kind, attr = kind[prefix], rest
        else:
            kind, attr = _ASCII_KEYS.get(norm, ("device", key))
        target = {
            "map": m.map_attrs,
            "dim": dims,
            "typed": typed,
            "data": m.data_attrs,
            "device": m.device_attrs,
            "supplier": m.supplier_data,
        }[kind]
        target[attr] = value
    if data_line is None:
        raise MapFormatError(
            f"{name}: no 'Data:' line: the map rows are missing (is the file truncated?)"
        )
    for key in ("BinType", "NullBin"):
        if key not in typed:
            raise MapFormatError(f"{name}: header has no {key!r} line")
    m.bin_type = normalise_bin_type(typed["BinType"], f"{name}: BinType")
    m.null_bin = typed["NullBin"]
    row_lines = []
    for ln in range(data_line, len(lines)):
        row = lines[ln]
        if row.strip() == "" or row.strip().lower() in ("enddata", "end"):
            continue
        row_lines.append(ln + 1)
        m.rows.append(split_row(row, m.bin_type, f"{name}: line {ln + 1}"))
    _check_dims(
        m,
        dims.get("Rows"),
        dims.get("Columns"),
        f"{name}: header",
        lambda k: f"{name}: line {row_lines[k]} (row {k + 1})",
    )
    return m


def _split_key(line: str) -> tuple[str, str | None, str]:
    positions = [(line.find(sep), sep) for sep in (":", "=") if line.find(sep) > 0]
    if not positions:
        return line, None, ""
    pos, sep = min(positions)
    return line[:pos].strip(), sep, line[pos + 1 :].strip().strip('"')


# --- writing ---------------------------------------------------------------------------------


def write_g85(
    maps: G85Map | list[G85Map], dest: str | PathLike | None = None, *, ascii: bool = False
) -> bytes:
    """Write G85 maps as XML (a ``Maps`` root) or, with ``ascii=True``, one map as ASCII.

    ``Rows``/``Columns`` are written from the data; ``read_g85`` of the result equals ``maps``.
    """
    maps = [maps] if isinstance(maps, G85Map) else list(maps)
    if ascii:
        if len(maps) != 1:
            raise MapFormatError(f"write_g85: the ASCII form holds one map, got {len(maps)}")
        data = _ascii_bytes(maps[0])
    else:
        root = ET.Element("Maps")
        for m in maps:
            _write_map(root, m)
        data = serialize_xml(root, None)
    if dest is not None:
        Path(dest).write_bytes(data)
    return data


def _write_map(root: ET.Element, m: G85Map) -> None:
    attrs = dict(m.map_attrs)
    if m.namespace:
        attrs = {"xmlns": m.namespace, **attrs}
    mel = ET.SubElement(root, "Map", attrs)
    dev_attrs = {}
    placed = False
    # keep the file's attribute order; Rows/Columns/BinType/NullBin go where G85 lists them
    for key, value in m.device_attrs.items():
        if key in ("Orientation", "OriginLocation", "MapType") and not placed:
            dev_attrs |= _typed_attrs(m)
            placed = True
        dev_attrs[key] = value
    if not placed:
        dev_attrs |= _typed_attrs(m)
    dev = ET.SubElement(mel, "Device", dev_attrs)
    for x, y in m.reference_devices:
        ET.SubElement(
            dev, "ReferenceDevice", {"ReferenceDeviceX": str(x), "ReferenceDeviceY": str(y)}
        )
    for b in m.bins:
        battrs = {"BinCode": b.code}
        if b.quality is not None:
            battrs["BinQuality"] = b.quality
        if b.count is not None:
            battrs["BinCount"] = str(b.count)
        if b.description is not None:
            battrs["BinDescription"] = b.description
        ET.SubElement(dev, "Bin", battrs)
    if m.supplier_data:
        ET.SubElement(dev, "SupplierData", dict(m.supplier_data))
    data = ET.SubElement(dev, "Data", dict(m.data_attrs))
    for row in m.rows:
        ET.SubElement(data, "Row").text = join_row(row, m.bin_type, spaced=True)


def _typed_attrs(m: G85Map) -> dict[str, str]:
    return {
        "Rows": str(m.n_rows),
        "Columns": str(m.n_cols),
        "BinType": m.bin_type,
        "NullBin": m.null_bin,
    }


def _ascii_key(kind: str, key: str) -> str:
    """The header name that reads back into the same place (known names plain, others prefixed)."""
    known = _ASCII_KEYS.get(key.replace("_", "").lower())
    if kind == "device":
        return key if known is None or known == ("device", key) else f"Device.{key}"
    if known == (kind, key):
        return key
    return {"map": "Map", "data": "Data"}[kind] + "." + key


def _ascii_bytes(m: G85Map) -> bytes:
    for where, values in (("map", m.map_attrs), ("device", m.device_attrs), ("data", m.data_attrs)):
        for key, value in values.items():
            if "\n" in str(value) or "\r" in str(value):
                raise MapFormatError(f"write_g85: {where} attribute {key!r} holds a line break")
    lines = [f"{_ascii_key('map', k)}: {v}" for k, v in m.map_attrs.items()]
    lines += [f"{_ascii_key('device', k)}: {v}" for k, v in m.device_attrs.items()]
    lines += [f"{k}: {v}" for k, v in _typed_attrs(m).items()]
    lines += [f"{_ascii_key('data', k)}: {v}" for k, v in m.data_attrs.items()]
    for x, y in m.reference_devices:
        lines.append(f"ReferenceDevice: {x} {y}")
    for b in m.bins:
        parts = [b.code, "-" if b.count is None else str(b.count), b.quality or "-"]
        if b.description is not None:
            parts.append(b.description)
        lines.append("Bin: " + " ".join(parts))
    for key, value in m.supplier_data.items():
        lines.append(f"SupplierData.{key}: {value}")
    lines.append("Data:")
    lines += [join_row(row, m.bin_type, spaced=True) for row in m.rows]
    return ("\n".join(lines) + "\n").encode("utf-8")
