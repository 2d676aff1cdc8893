"""SINF (Simplified Integrator Nested Format) wafer maps, read only.

A header of ``KEY:value`` lines (``DEVICE``, ``LOT``, ``WAFER``, ``FNLOC`` flat position 0 top /
90 right / 180 bottom / 270 left, ``ROWCT``, ``COLCT``, ``BCEQU`` good codes, ``REFPX``/``REFPY``,
``DUTMS``, ``XDIES``/``YDIES``, ``DIECT``, ``COMMENT``) then one ``RowData:`` line per array row,
top row first, codes separated by spaces [K: artwork.com SINF description]. Codes are two hex
digits: ``__`` no die, ``@@`` uninspected die (kept, quality ``Skip``, no bin), codes listed in
``BCEQU`` are good (``01`` when BCEQU is absent or blank), every other code a fail.
Three-digit decimal variants exist: pass ``code_base=10``.

The file says nothing about where its origin is [U]: by default the top-left cell is (0, 0) with
x growing right and y growing down, the usual prober numbering (``origin_location`` overrides).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike

import polars as pl

from backend_fab.errors import MapFormatError
from backend_fab.io.maps._grid import (
    axis_away_from,
    axis_signs,
    cell_to_canonical,
    origin_cell,
    pos_flags,
)
from backend_fab.io.maps.e142 import _DIE_COLUMNS, _source

__all__ = ["SinfMap", "read_sinf"]

_NULL = "__"
_UNINSPECTED = "@@"


@dataclass
class SinfMap:
    """A SINF map: header items in file order and the code rows (top row first)."""

    header: dict[str, str]
    rows: list[list[str]]
    source: str = "<bytes>"
    good_codes: tuple[str, ...] = field(default=("01",))

    @property
    def lot_id(self) -> str | None:
        return self.header.get("LOT") or None

    @property
    def wafer_id(self) -> str | None:
        return self.header.get("WAFER") or None

    @property
    def product(self) -> str | None:
        return self.header.get("DEVICE") or None

    @property
    def flat_location(self) -> int | None:
        value = self.header.get("FNLOC")
        return int(float(value)) if value not in (None, "") else None

    def die(self, *, origin_location: str = "UpperLeft", code_base: int = 16) -> pl.DataFrame:
        """Every die (not ``__``); columns as :meth:`E142Document.die`. Data coordinates grow
        away from the origin corner (right and down from the default top-left).

        ``bin`` is the code read in ``code_base`` (null for ``@@``); ``bin_quality`` is ``Pass``
        for codes in BCEQU, ``Skip`` for ``@@``, ``Fail`` otherwise.
        """
        n_rows = len(self.rows)
        n_cols = len(self.rows[0]) if self.rows else 0
        origin_cell(origin_location, 1, 1, self.source)
        rr, cc, codes = [], [], []
        for r, row in enumerate(self.rows):
            for c, code in enumerate(row):
                if code != _NULL:
                    rr.append(r)
                    cc.append(c)
                    codes.append(code)
        x, y = cell_to_canonical(rr, cc, n_rows, n_cols, origin_location)
        axis = axis_away_from(origin_location)
        sx, sy = axis_signs(axis)
        px, py = pos_flags(axis)
        good = set(self.good_codes)
        bins, quality = [], []
        for code in codes:
            if code == _UNINSPECTED:
                bins.append(None)
                quality.append("Skip")
                continue
            try:
                bins.append(int(code, code_base))
            except ValueError:
                raise MapFormatError(
                    f"{self.source}: code {code!r} is not a base-{code_base} bin code"
                ) from None
            quality.append("Pass" if code in good else "Fail")
        n = len(codes)
        return pl.DataFrame(
            {
                "substrate_type": ["Wafer"] * n,
                "substrate_id": [self.wafer_id] * n,
                "lot_id": [self.lot_id] * n,
                "map_name": ["SINF"] * n,
                "row": rr,
                "col": cc,
                "x": x.tolist(),
                "y": y.tolist(),
                "data_x": (sx * x).tolist(),
                "data_y": (sy * y).tolist(),
                "pos_x": [px] * n,
                "pos_y": [py] * n,
                "bin_code": codes,
                "bin": bins,
                "bin_quality": quality,
                "device_id": [None] * n,
            },
            schema=_DIE_COLUMNS,
        )


def read_sinf(source: str | PathLike | bytes, *, name: str | None = None) -> SinfMap:
    """Read a SINF map (path or bytes); ``name`` is what error messages call the source.

    Raises :class:`MapFormatError` naming the file and line: no ``RowData`` lines, ``ROWCT`` or
    ``COLCT`` that disagree with the rows, ragged rows, a header line without ``:``.
    """
    data, name = _source(source, name)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise MapFormatError(
            f"{name}: byte offset {exc.start}: not ASCII text, not a SINF map"
        ) from None
    header: dict[str, str] = {}
    rows: list[list[str]] = []
    row_lines: list[int] = []
    for ln, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        key, sep, value = stripped.partition(":")
        if not sep:
            raise MapFormatError(
                f"{name}: line {ln}: expected 'KEY:value' or 'RowData:...', got {stripped[:40]!r}"
            )
        if key.strip().lower() == "rowdata":
            rows.append(value.split())
            row_lines.append(ln)
        elif rows:
            raise MapFormatError(f"{name}: line {ln}: header item {key!r} after the RowData lines")
        else:
            header[key.strip().upper()] = value.strip()
    if not rows:
        raise MapFormatError(f"{name}: no RowData lines: the map is empty or truncated")

    def count(key: str) -> int | None:
        value = header.get(key)
        if value in (None, ""):
            return None
        try:
            return int(value)
        except ValueError:
            raise MapFormatError(f"{name}: header {key}:{value!r} is not an integer") from None

    n_rows, n_cols = count("ROWCT"), count("COLCT")
    if n_rows is not None and n_rows != len(rows):
        raise MapFormatError(f"{name}: ROWCT:{n_rows} but the file has {len(rows)} RowData lines")
    width = n_cols if n_cols is not None else len(rows[0])
    for k, row in enumerate(rows):
        if len(row) != width:
            raise MapFormatError(
                f"{name}: line {row_lines[k]} (RowData {k + 1}): {len(row)} codes but "
                + (f"COLCT:{n_cols}" if n_cols is not None else f"the first row has {width}")
            )
    good = tuple(c for c in header.get("BCEQU", "").replace(",", " ").split() if c) or ("01",)
    return SinfMap(header=header, rows=rows, source=name, good_codes=good)
