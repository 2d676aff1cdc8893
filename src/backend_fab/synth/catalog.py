"""The synthetic fab's fixed vocabulary: parametric tests, bins, defect modes, assembly steps.

Everything here is data (plain tuples and dicts): the generator reads it, tests and dataset cards
describe it. Units follow STDF habits (V, mA, uA, nA, MHz, ns, mV, mOhm).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ASSEMBLY_STEPS",
    "FT_HBINS",
    "FT_SBINS",
    "TEST_CATALOG",
    "WS_HBINS",
    "AssemblyStep",
    "BinDef",
    "TestDef",
    "ws_sbins",
]


@dataclass(frozen=True)
class TestDef:
    """One test of the catalogue.

    ``family``: ``CONT`` (continuity, fails are contact fails), ``LEAK`` (log-normal leakage),
    ``FUNC`` (functional, STDF FTR: pass/fail only), ``DC`` or ``AC`` (normal parametric).
    Limits are ``nominal ± k_lo/k_hi · sigma`` (``sigma`` = within-wafer noise). For ``LEAK``
    tests nominal/sigma are the median and the sigma of ``ln(value)``; only ``hi`` applies.
    ``radial``/``linear``: amplitude (in sigmas) of the within-wafer gradient drawn per wafer.
    ``pat``: wide limits (k >= 14), so planted 6-10 sigma outliers stay inside spec.
    """

    test_num: int
    name: str
    family: str
    units: str
    nominal: float
    sigma: float
    k_lo: float
    k_hi: float
    radial: float = 0.0
    linear: float = 0.0
    pat: bool = False
    ws_sbin: int = 0

    @property
    def kind(self) -> str:
        """STDF record kind: ``F`` for functional tests, else ``P``."""
        return "F" if self.family == "FUNC" else "P"

    @property
    def lo_limit(self) -> float | None:
        if self.family in ("FUNC", "LEAK"):
            return None
        return self.nominal - self.k_lo * self.sigma

    @property
    def hi_limit(self) -> float | None:
        if self.family == "FUNC":
            return None
        if self.family == "LEAK":
            import math

            return math.exp(self.nominal + self.k_hi * self.sigma)
        return self.nominal + self.k_hi * self.sigma


#: Test flow order. The first three (continuity, IDDQ, input leakage) and the two functional
#: tests are always in a product's program; ``n_tests`` counts the parametric (P) tests and takes
#: the first ones of this list after continuity.
TEST_CATALOG: tuple[TestDef, ...] = (
    TestDef(1000, "CONT_VDD_DIODE", "CONT", "V", -0.62, 0.015, 12.0, 12.0, ws_sbin=10),
    TestDef(1100, "IDDQ_VDD", "LEAK", "uA", 0.7, 0.18, 0.0, 5.5, radial=1.0, ws_sbin=20),
    TestDef(1101, "ILEAK_IN", "LEAK", "nA", 1.6, 0.22, 0.0, 5.5, linear=0.6, ws_sbin=21),
    TestDef(2000, "SCAN_CHAIN", "FUNC", "", 0.0, 1.0, 0.0, 0.0, ws_sbin=30),
    TestDef(2001, "MBIST_SRAM", "FUNC", "", 0.0, 1.0, 0.0, 0.0, ws_sbin=31),
    TestDef(3000, "VREF_1V2", "DC", "V", 1.2, 0.0025, 16.0, 16.0, radial=1.5, pat=True),
    TestDef(3001, "VOUT_LDO_3V3", "DC", "V", 3.3, 0.006, 15.0, 15.0, linear=1.0, pat=True),
    TestDef(3002, "IDD_ACTIVE", "DC", "mA", 12.5, 0.35, 5.0, 5.0, radial=2.0),
    TestDef(3003, "VOH_IO", "DC", "V", 3.18, 0.012, 14.0, 14.0, pat=True),
    TestDef(3004, "VOL_IO", "DC", "V", 0.12, 0.004, 14.0, 14.0, linear=0.8, pat=True),
    TestDef(4000, "FOSC_INT", "AC", "MHz", 32.0, 0.12, 5.5, 5.5, radial=2.5),
    TestDef(4001, "TPD_IO", "AC", "ns", 4.2, 0.05, 16.0, 16.0, radial=1.2, pat=True),
    TestDef(3005, "RON_SW", "DC", "mOhm", 85.0, 1.1, 14.0, 14.0, radial=1.0, pat=True),
    TestDef(3006, "VTH_NMOS", "DC", "mV", 420.0, 3.0, 15.0, 15.0, linear=1.5, pat=True),
    TestDef(3007, "VTH_PMOS", "DC", "mV", -445.0, 3.2, 15.0, 15.0, linear=1.5, pat=True),
    TestDef(3008, "OFFSET_AMP", "DC", "mV", 0.0, 0.35, 14.0, 14.0, pat=True),
    TestDef(3009, "GAIN_AMP", "DC", "dB", 40.0, 0.08, 16.0, 16.0, radial=0.8, pat=True),
    TestDef(3010, "IDD_STBY", "DC", "uA", 6.0, 0.25, 5.0, 5.0, radial=1.5),
    TestDef(4002, "FMAX_CORE", "AC", "MHz", 210.0, 2.5, 14.0, 14.0, radial=1.5, pat=True),
    TestDef(3011, "TEMP_SENSE", "DC", "degC", 25.0, 0.4, 15.0, 15.0, pat=True),
    TestDef(3012, "BG_TEMPCO", "DC", "ppm", 12.0, 0.9, 14.0, 14.0, linear=0.7, pat=True),
    TestDef(3013, "VBAT_MON", "DC", "V", 4.2, 0.008, 15.0, 15.0, pat=True),
    TestDef(4003, "TRISE_OUT", "AC", "ns", 1.8, 0.03, 15.0, 15.0, radial=1.0, pat=True),
    TestDef(3014, "IBIAS_REF", "DC", "uA", 10.0, 0.09, 15.0, 15.0, radial=1.2, pat=True),
)


def _number_param_bins(tests: tuple[TestDef, ...]) -> tuple[TestDef, ...]:
    from dataclasses import replace

    out, k = [], 0
    for t in tests:
        if t.family in ("DC", "AC"):
            out.append(replace(t, ws_sbin=40 + k))
            k += 1
        else:
            out.append(t)
    return tuple(out)


TEST_CATALOG = _number_param_bins(TEST_CATALOG)

#: Continuity, leakage and functional tests present in every program (not counted by n_tests).
FIXED_TESTS = 5


@dataclass(frozen=True)
class BinDef:
    bin: int
    name: str
    pass_fail: str  # "P" / "F"
    hbin: int = 0  # soft bins: the hard bin they map to


WS_HBINS: tuple[BinDef, ...] = (
    BinDef(1, "PASS", "P"),
    BinDef(2, "CONTINUITY", "F"),
    BinDef(3, "LEAKAGE", "F"),
    BinDef(4, "FUNCTIONAL", "F"),
    BinDef(5, "DC_PARAMETRIC", "F"),
    BinDef(6, "AC_PARAMETRIC", "F"),
)


def ws_sbins(tests: tuple[TestDef, ...]) -> tuple[BinDef, ...]:
    """Wafer-sort soft bins of a program: fixed ones plus one per parametric DC/AC test."""
    out = [
        BinDef(1, "PASS", "P", 1),
        BinDef(10, "CONT_OPEN", "F", 2),
        BinDef(11, "CONT_SHORT", "F", 2),
        BinDef(20, "IDDQ_HIGH", "F", 3),
        BinDef(21, "ILEAK_HIGH", "F", 3),
        BinDef(30, "SCAN_FAIL", "F", 4),
        BinDef(31, "MBIST_FAIL", "F", 4),
    ]
    for t in tests:
        if t.family in ("DC", "AC"):
            out.append(BinDef(t.ws_sbin, f"{t.name}_FAIL", "F", 5 if t.family == "DC" else 6))
    return tuple(out)


FT_HBINS: tuple[BinDef, ...] = (
    BinDef(1, "PASS", "P"),
    BinDef(2, "OPEN_SHORT", "F"),
    BinDef(3, "LEAKAGE", "F"),
    BinDef(4, "FUNCTIONAL", "F"),
    BinDef(5, "PARAMETRIC", "F"),
)

FT_SBINS: tuple[BinDef, ...] = (
    BinDef(1, "PASS", "P", 1),
    BinDef(100, "OPEN", "F", 2),
    BinDef(101, "SHORT", "F", 2),
    BinDef(200, "IDDQ_HIGH", "F", 3),
    BinDef(300, "SCAN_FAIL", "F", 4),
    BinDef(301, "MBIST_FAIL", "F", 4),
    BinDef(500, "PARAM_FAIL", "F", 5),
)

#: Defect mode of a die failing by a spatial signature: (leakage, input leakage, scan, mbist, dc)
#: weights per pattern class. Edge and scratch defects are mostly leakage/shorts; centre defects
#: mostly functional.
DEFECT_MODES = ("iddq", "ileak", "scan", "mbist", "dc")
DEFECT_MODE_WEIGHTS: dict[str, tuple[float, ...]] = {
    "none": (0.25, 0.15, 0.25, 0.15, 0.20),
    "Center": (0.15, 0.05, 0.40, 0.30, 0.10),
    "Donut": (0.25, 0.10, 0.30, 0.20, 0.15),
    "Edge-Loc": (0.35, 0.15, 0.20, 0.10, 0.20),
    "Edge-Ring": (0.35, 0.15, 0.20, 0.05, 0.25),
    "Loc": (0.25, 0.10, 0.30, 0.20, 0.15),
    "Scratch": (0.45, 0.25, 0.15, 0.05, 0.10),
    "Random": (0.25, 0.15, 0.25, 0.15, 0.20),
    "Near-full": (0.20, 0.10, 0.35, 0.25, 0.10),
    "reticle": (0.10, 0.05, 0.45, 0.35, 0.05),
}


@dataclass(frozen=True)
class AssemblyStep:
    """One assembly step: reject codes with their share, base reject rate per unit, the
    equipment pool and the material kind consumed (``""``: none)."""

    step: str
    codes: tuple[tuple[str, float], ...]
    rate: float
    equipment: str
    n_equipment: int
    material: str


ASSEMBLY_STEPS: tuple[AssemblyStep, ...] = (
    AssemblyStep(
        "SAW", (("CHIPPING", 0.6), ("CRACK", 0.3), ("KERF_SHIFT", 0.1)), 0.002, "SAW", 3, "BLD"
    ),
    AssemblyStep(
        "DIE_ATTACH", (("VOID", 0.5), ("TILT", 0.3), ("DIE_SHEAR", 0.2)), 0.0015, "DA", 4, "EPX"
    ),
    AssemblyStep(
        "WIRE_BOND",
        (("NSOP", 0.35), ("NSOL", 0.2), ("BALL_LIFT", 0.15), ("WIRE_SWEEP", 0.15), ("SHORT", 0.15)),
        0.003,
        "WB",
        6,
        "AUW",
    ),
    AssemblyStep(
        "MOLD",
        (("INCOMPLETE_FILL", 0.3), ("VOID", 0.4), ("DELAMINATION", 0.3)),
        0.0015,
        "MP",
        3,
        "EMC",
    ),
    AssemblyStep("MARK", (("MISPRINT", 1.0),), 0.0005, "LM", 2, ""),
    AssemblyStep("TRIM_FORM", (("COPLANARITY", 0.6), ("BURR", 0.4)), 0.001, "TF", 2, ""),
)
