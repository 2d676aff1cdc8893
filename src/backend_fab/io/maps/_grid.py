"""Map arrays and coordinate conventions shared by the E142, G85 and SINF readers and writers.

A map is a rectangular array of bin codes, written row by row, the first row at the top as the map
is displayed. Map files number devices from an **origin** device (``OriginLocation``: a corner or
the centre of the array) along an **axis direction** (``AxisDirection``: the way x and y grow).

For the array cell in display row ``r`` (0 = top) and column ``c`` (0 = left) of an array with
``rows`` x ``cols`` cells, let ``c0``/``u0`` be the column / row-from-the-bottom of the origin
cell (``Left``: ``c0 = 0``, ``Right``: ``c0 = cols - 1``, ``Center``: ``c0 = cols // 2``;
``Lower``: ``u0 = 0``, ``Upper``: ``u0 = rows - 1``, ``Center``: ``u0 = rows // 2``). Then

* file coordinates: ``fx = sx * (c - c0)``, ``fy = sy * ((rows - 1 - r) - u0)`` with ``sx = +1``
  when x grows to the right (``...Right``) else -1, ``sy = +1`` when y grows up (``Up...``) else -1;
* canonical coordinates (``backend_fab.layout``: x right, y up, same origin as the data, differing
  only by sign): ``x = sx * fx = c - c0``, ``y = sy * fy = (rows - 1 - r) - u0``.

So the axis direction changes only the numbers written in the file (transfer, device-id and
reference coordinates), never where a die sits; the origin location fixes which die is (0, 0).
The file coordinates are the map's **data coordinates** in the sense of :mod:`backend_fab.layout`
(a sort map numbers die as the prober and tester do): ``pos_x = "R"`` when x grows right else
``"L"``, ``pos_y = "U"`` when y grows up else ``"D"`` (STDF WCR ``POS_X``/``POS_Y``), and the
canonical coordinates are their sign flips.
With ``OriginLocation="Center"`` the canonical (0, 0) is the centre cell, which matches the lake's
die coordinates (die (0, 0) is the die nearest the wafer centre) for a map centred on the wafer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from backend_fab.errors import MapFormatError

__all__ = [
    "AXIS_DIRECTIONS",
    "BIN_WIDTHS",
    "ORIGIN_LOCATIONS",
    "axis_away_from",
    "axis_direction",
    "axis_signs",
    "canonical_to_cell",
    "cell_to_canonical",
    "code_value",
    "fit_array",
    "join_row",
    "normalise_bin_type",
    "origin_cell",
    "pos_flags",
    "split_row",
]

ORIGIN_LOCATIONS = ("LowerLeft", "LowerRight", "UpperLeft", "UpperRight", "Center")
AXIS_DIRECTIONS = ("UpRight", "DownRight", "UpLeft", "DownLeft")

#: Characters per code when a row is written without separators (E142 / G85 BinType).
BIN_WIDTHS = {"ASCII": 1, "Decimal": 3, "HexaDecimal": 2, "Integer2": 4}
_BIN_TYPE_NAMES = {name.lower(): name for name in BIN_WIDTHS} | {"hexadecimal": "HexaDecimal"}


def normalise_bin_type(value: str, where: str) -> str:
    """Canonical spelling of a BinType (files write ``Ascii``, ``ASCII``, ``decimal`` ...)."""
    name = _BIN_TYPE_NAMES.get(str(value).strip().lower())
    if name is None:
        raise MapFormatError(f"{where}: BinType {value!r} is not one of {', '.join(BIN_WIDTHS)}")
    return name


def axis_signs(axis_direction: str, where: str = "map") -> tuple[int, int]:
    """``(sx, sy)``: +1 where the file's x grows right / y grows up, -1 otherwise."""
    if axis_direction not in AXIS_DIRECTIONS:
        raise MapFormatError(
            f"{where}: AxisDirection {axis_direction!r} is not one of {', '.join(AXIS_DIRECTIONS)}"
        )
    return (
        1 if axis_direction.endswith("Right") else -1,
        1 if axis_direction.startswith("Up") else -1,
    )


def pos_flags(axis_direction: str) -> tuple[str, str]:
    """``(pos_x, pos_y)`` of an AxisDirection: ``"R"``/``"L"`` and ``"U"``/``"D"``."""
    sx, sy = axis_signs(axis_direction)
    return ("R" if sx > 0 else "L"), ("U" if sy > 0 else "D")


def axis_direction(pos_x: str = "R", pos_y: str = "U") -> str:
    """The AxisDirection whose data coordinates grow towards ``pos_x`` / ``pos_y``."""
    if pos_x not in ("R", "L") or pos_y not in ("U", "D"):
        raise ValueError(f"pos_x must be 'R' or 'L' and pos_y 'U' or 'D', got {pos_x!r}, {pos_y!r}")
    return ("Up" if pos_y == "U" else "Down") + ("Right" if pos_x == "R" else "Left")


def axis_away_from(origin_location: str) -> str:
    """Axes growing away from an origin corner (right and up from a centre origin)."""
    if origin_location == "Center":
        return "UpRight"
    vertical = "Up" if origin_location.startswith("Lower") else "Down"
    return vertical + ("Right" if origin_location.endswith("Left") else "Left")


def origin_cell(origin_location: str, rows: int, cols: int, where: str = "map") -> tuple[int, int]:
    """``(c0, u0)``: column from the left and row from the bottom of the origin cell."""
    if origin_location not in ORIGIN_LOCATIONS:
        raise MapFormatError(
            f"{where}: OriginLocation {origin_location!r} is not one of "
            f"{', '.join(ORIGIN_LOCATIONS)}"
        )
    if origin_location == "Center":
        return cols // 2, rows // 2
    c0 = 0 if origin_location.endswith("Left") else cols - 1
    u0 = 0 if origin_location.startswith("Lower") else rows - 1
    return c0, u0


def cell_to_canonical(
    r, c, rows: int, cols: int, origin_location: str
) -> tuple[np.ndarray, np.ndarray]:
    """Display cell ``(r, c)`` -> canonical ``(x, y)`` (int32 arrays)."""
    c0, u0 = origin_cell(origin_location, rows, cols)
    r = np.asarray(r, dtype=np.int64)
    c = np.asarray(c, dtype=np.int64)
    return (c - c0).astype(np.int32), ((rows - 1 - r) - u0).astype(np.int32)


def canonical_to_cell(
    x, y, rows: int, cols: int, origin_location: str
) -> tuple[np.ndarray, np.ndarray]:
    """Canonical ``(x, y)`` -> display cell ``(r, c)`` (int64 arrays; may fall outside)."""
    c0, u0 = origin_cell(origin_location, rows, cols)
    x = np.asarray(x, dtype=np.int64)
    y = np.asarray(y, dtype=np.int64)
    return rows - 1 - (y + u0), x + c0


def fit_array(x, y, origin_location: str, where: str = "map") -> tuple[int, int]:
    """Smallest ``(rows, cols)`` whose origin convention places every canonical ``(x, y)``.

    Corner origins need the coordinates on one side of zero (``LowerLeft``: x >= 0 and y >= 0);
    ``Center`` gives an odd, symmetric array. Raises :class:`MapFormatError` otherwise.
    """
    x = np.asarray(x, dtype=np.int64)
    y = np.asarray(y, dtype=np.int64)
    if x.size == 0:
        return 1, 1

    def extent(v: np.ndarray, low_side: bool | None, axis: str) -> int:
        if low_side is None:
            return 2 * int(np.abs(v).max()) + 1
        if low_side:
            if v.min() < 0:
                raise MapFormatError(
                    f"{where}: OriginLocation {origin_location!r} needs {axis} >= 0 but the die "
                    f"span {axis} {int(v.min())}..{int(v.max())}; use OriginLocation='Center'"
                )
            return int(v.max()) + 1
        if v.max() > 0:
            raise MapFormatError(
                f"{where}: OriginLocation {origin_location!r} needs {axis} <= 0 but the die span "
                f"{axis} {int(v.min())}..{int(v.max())}; use OriginLocation='Center'"
            )
        return -int(v.min()) + 1

    if origin_location not in ORIGIN_LOCATIONS:
        origin_cell(origin_location, 1, 1, where)
    if origin_location == "Center":
        return extent(y, None, "y"), extent(x, None, "x")
    cols = extent(x, origin_location.endswith("Left"), "x")
    rows = extent(y, origin_location.startswith("Lower"), "y")
    return rows, cols


def split_row(text: str, bin_type: str, where: str) -> list[str]:
    """Codes of one written row: whitespace-separated, or fixed width when written without
    separators (ASCII 1, HexaDecimal 2, Decimal 3, Integer2 4 characters)."""
    text = text.strip("\r\n")
    if bin_type == "Decimal" or any(ch in text.strip() for ch in " \t"):
        return text.split()
    text = text.strip() if bin_type != "ASCII" else text
    width = BIN_WIDTHS[bin_type]
    if len(text) % width:
        raise MapFormatError(
            f"{where}: {len(text)} characters is not a whole number of {bin_type} codes "
            f"({width} characters each)"
        )
    return [text[i : i + width] for i in range(0, len(text), width)]


def join_row(codes: Sequence[str], bin_type: str, *, spaced: bool = False) -> str:
    """One row as written: Decimal codes separated by spaces, other types run together (E142
    [K: artwork.com E142 notes]); ``spaced`` separates every multi-character type (what the G85
    ``g85`` package writes and needs to read a HexaDecimal row)."""
    if bin_type == "Decimal" or (spaced and bin_type != "ASCII"):
        return " ".join(codes)
    width = BIN_WIDTHS[bin_type]
    if any(len(code) != width for code in codes):
        return " ".join(codes)
    return "".join(codes)


def code_value(code: str, bin_type: str) -> int | None:
    """Numeric bin of a code: Decimal base 10, HexaDecimal/Integer2 base 16, ASCII digits only."""
    try:
        if bin_type in ("HexaDecimal", "Integer2"):
            return int(code, 16)
        if bin_type == "ASCII" and not code.isdigit():
            return None
        return int(code)
    except ValueError:
        return None
