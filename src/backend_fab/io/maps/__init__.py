"""Wafer and strip map files: SEMI E142 (XML), SEMI G85 (XML and ASCII) and SINF.

Readers return format models that keep the file's own conventions (OriginLocation,
AxisDirection, Orientation, BinType), so writing what was read gives the same content back;
``.die()`` / ``.transfers()`` flatten them to polars frames in the canonical frame of
:mod:`backend_fab.layout` (x right, y up; see :mod:`backend_fab.io.maps._grid` for the rule).
XML is parsed with every DTD feature refused (no entity expansion, no external entities).

Importing this package registers the three formats with :mod:`backend_fab.ingest` and the
``strip_maps`` table with :mod:`backend_fab.schema`.
"""

from backend_fab.io.maps.e142 import (
    E142_NAMESPACE,
    BinCodeMap,
    BinDefinition,
    E142Document,
    Layout,
    Overlay,
    ReferenceDevice,
    Substrate,
    SubstrateMap,
    TransferMap,
    read_e142,
    write_e142,
)
from backend_fab.io.maps.g85 import G85_NAMESPACE, G85_ORIGIN_CODES, G85Map, read_g85, write_g85
from backend_fab.io.maps.lake import STRIP_MAPS, e142_tables
from backend_fab.io.maps.sinf import SinfMap, read_sinf

__all__ = [
    "E142_NAMESPACE",
    "G85_NAMESPACE",
    "G85_ORIGIN_CODES",
    "STRIP_MAPS",
    "BinCodeMap",
    "BinDefinition",
    "E142Document",
    "G85Map",
    "Layout",
    "Overlay",
    "ReferenceDevice",
    "SinfMap",
    "Substrate",
    "SubstrateMap",
    "TransferMap",
    "e142_tables",
    "read_e142",
    "read_g85",
    "read_sinf",
    "write_e142",
    "write_g85",
]


def _register_ingesters() -> None:
    from backend_fab.ingest import register_ingester

    for name, suffix in (("SEMI E142", "e142"), ("SEMI G85", "g85"), ("SINF", "sinf")):
        register_ingester(
            f"backend_fab.io.maps.lake:detect_{suffix}",
            f"backend_fab.io.maps.lake:load_{suffix}",
            name,
        )


_register_ingesters()
