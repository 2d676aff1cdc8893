"""Scenarios of the synthetic fab: TOML files (or dicts) -> validated :class:`Scenario`.

Where scenarios live. The TOML files are package data in ``backend_fab/synth/scenarios/`` (so an
installed package finds them); ``datasets/`` at the repository root holds the same files beside
their dataset cards (``datasets/README.md``) for readers of the repository, and a test keeps the two
copies byte-identical. :func:`load_scenario` takes a packaged name (``ci``, ``demo``,
``bench-day``) or the path of any TOML file.

File layout (every key but ``name`` and the product geometry has a default; unknown keys are
errors)::

    name = "ci"
    description = "..."
    seed = 20240304
    start = 2024-03-04T06:00:00Z      # first lot's wafer-sort start (UTC)
    lot_interval_minutes = 90         # time between lot starts

    [defaults]                        # optional: defaults for every [[products]] entry
    n_sites = 4

    [[products]]
    name = "AX100"
    wafer_size_mm = 200.0
    die_width_mm = 3.5
    die_height_mm = 3.5
    lots = 2
    wafers_per_lot = 5
    [products.pattern_mix]            # optional: relative weights of the WM-811K classes
    none = 0.4
    Edge-Ring = 0.1

See :class:`ProductConfig` for every product key, its unit and default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from backend_fab.errors import ScenarioError
from backend_fab.synth.catalog import TEST_CATALOG
from backend_fab.synth.patterns import PATTERN_CLASSES

__all__ = ["ProductConfig", "Scenario", "load_scenario", "scenario_names", "scenario_path"]

#: Class weights used when a product gives no ``pattern_mix``: WM-811K's defect classes enriched
#: (WM-811K itself is 85 % "none") so that every class appears in small scenarios.
DEFAULT_PATTERN_MIX: dict[str, float] = {
    "none": 0.40,
    "Center": 0.08,
    "Donut": 0.06,
    "Edge-Loc": 0.09,
    "Edge-Ring": 0.11,
    "Loc": 0.08,
    "Scratch": 0.08,
    "Random": 0.06,
    "Near-full": 0.04,
}

_N_PARAM_MAX = sum(1 for t in TEST_CATALOG if t.kind == "P")


@dataclass(frozen=True)
class ProductConfig:
    """One product of a scenario. Lengths in mm, rates are probabilities, times in seconds.

    Geometry: ``wafer_size_mm`` (150/200/300 typical), ``die_width_mm``, ``die_height_mm``,
    ``edge_exclusion_mm``, ``notch``, ``pos_x``/``pos_y`` (axis directions of the tester data, see
    :mod:`backend_fab.layout`), reticle size and offset in die, ``center_x``/``center_y``.

    Wafer sort: ``n_sites`` probe sites per touchdown (1, 2, 4, 8 or 16); ``n_tests`` parametric
    (STDF PTR) tests in the program, 3..22, plus two functional tests; ``lots`` and
    ``wafers_per_lot`` (<= 25); ``short_lot_rate``: chance a lot is missing 1-3 wafer slots.

    Planted effects: ``pattern_mix`` (relative class weights per wafer) or ``pattern_cycle`` (a
    list of classes given to the product's wafers in turn, over all its lots: every class shows
    up in a small scenario); ``reticle_lot_rate`` (chance a lot carries a reticle repeat) and
    ``reticle_lots`` (lot numbers, 1-based, that always do); ``bad_site_lot_rate`` (chance the
    lot's probe card has a bad site) and ``bad_site_lots``; ``contact_rate`` (base contact-fail rate per die); ``outlier_rate`` (fraction
    of good die given one planted parametric outlier); ``lot_shift_sigma``/``wafer_shift_sigma``
    (sd of lot and wafer mean shifts, in test sigmas); ``site_offset_sigma`` (sd of per-site
    offsets); ``retest_other`` (chance a non-contact fail is retested; contact fails are retested
    with chance 0.95).

    Reliability: latent-fail probability of a good die ``1 - exp(-(latent_base +
    latent_per_neighbor * n + latent_outlier * outlier))`` with ``n`` failing neighbours (8-way).

    Assembly and final test: ``assembly_lot_size`` (die per assembly lot), strips of
    ``strip_rows`` x ``strip_cols`` units, ``ft_sites``, ``burn_in`` (add the post-burn-in
    insertion ``PBI``), ``bond_excursion_rate`` (chance an assembly lot is bonded on the planted
    bad wire bonder), ``ecid_read_fail_rate`` (units whose ECID cannot be read at final test).
    """

    name: str
    wafer_size_mm: float
    die_width_mm: float
    die_height_mm: float
    edge_exclusion_mm: float = 3.0
    notch: str = "D"
    pos_x: str = "R"
    pos_y: str = "U"
    reticle_cols: int = 4
    reticle_rows: int = 3
    reticle_offset_x: int = 0
    reticle_offset_y: int = 0
    center_x: float = 0.0
    center_y: float = 0.0
    lot_prefix: str = ""
    n_sites: int = 4
    n_tests: int = 12
    lots: int = 2
    wafers_per_lot: int = 25
    short_lot_rate: float = 0.2
    tester: str = "V93K-01"
    pattern_mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PATTERN_MIX))
    pattern_cycle: tuple[str, ...] = ()
    bad_site_lots: tuple[int, ...] = ()
    reticle_lots: tuple[int, ...] = ()
    reticle_lot_rate: float = 0.15
    bad_site_lot_rate: float = 0.25
    contact_rate: float = 0.003
    outlier_rate: float = 0.002
    lot_shift_sigma: float = 0.5
    wafer_shift_sigma: float = 0.25
    site_offset_sigma: float = 0.15
    retest_other: float = 0.3
    latent_base: float = 0.0005
    latent_per_neighbor: float = 0.008
    latent_outlier: float = 0.05
    assembly_lot_size: int = 5000
    strip_rows: int = 4
    strip_cols: int = 16
    ft_sites: int = 4
    burn_in: bool = True
    bond_excursion_rate: float = 0.25
    ecid_read_fail_rate: float = 0.001

    @property
    def code(self) -> str:
        """Lot-id prefix: ``lot_prefix`` or the product name's letters and digits."""
        if self.lot_prefix:
            return self.lot_prefix
        return "".join(c for c in self.name.upper() if c.isalnum())[:6]


@dataclass(frozen=True)
class Scenario:
    """A whole synthetic fab: products with their lots, a seed and a start time."""

    name: str
    products: tuple[ProductConfig, ...]
    seed: int = 0
    description: str = ""
    start: datetime = datetime(2024, 3, 4, 6, 0, tzinfo=UTC)
    lot_interval_minutes: float = 90.0
    source: str = ""

    def with_seed(self, seed: int | None) -> Scenario:
        """The same scenario with another seed (``None``: unchanged)."""
        return self if seed is None else dataclasses.replace(self, seed=int(seed))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready description (the input of :attr:`config_hash`)."""
        out = dataclasses.asdict(self)
        out["start"] = self.start.isoformat()
        out.pop("source")
        return out

    @cached_property
    def config_hash(self) -> str:
        """sha256 of the canonical JSON of the scenario (seed included): part of every run id."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def n_die_planned(self) -> int:
        """Wafer-sort die of the full scenario, before short lots (for progress and benchmarks)."""
        from backend_fab.synth.tester import product_layout

        return sum(p.lots * p.wafers_per_lot * product_layout(p).n_gross for p in self.products)


_PRODUCT_FIELDS = {f.name: f for f in fields(ProductConfig)}
_TOP_KEYS = {"name", "description", "seed", "start", "lot_interval_minutes", "defaults", "products"}


def _where(source: str, key: str) -> str:
    return f"scenario {source}: {key}" if source else f"scenario: {key}"


def _check_type(value, expected, source: str, key: str):
    if expected in ("float", float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ScenarioError(f"{_where(source, key)} must be a number, got {value!r}")
        return float(value)
    if expected in ("int", int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScenarioError(f"{_where(source, key)} must be an integer, got {value!r}")
        return int(value)
    if expected in ("bool", bool):
        if not isinstance(value, bool):
            raise ScenarioError(f"{_where(source, key)} must be true or false, got {value!r}")
        return value
    if expected in ("str", str):
        if not isinstance(value, str):
            raise ScenarioError(f"{_where(source, key)} must be a string, got {value!r}")
        return value
    return value


def _product(raw: dict, defaults: dict, source: str, index: int) -> ProductConfig:
    merged = {**defaults, **raw}
    where = f"products[{index}]"
    unknown = sorted(set(merged) - set(_PRODUCT_FIELDS))
    if unknown:
        raise ScenarioError(
            f"{_where(source, where + '.' + unknown[0])} is not a product key; "
            f"known keys: {', '.join(sorted(_PRODUCT_FIELDS))}"
        )
    for required in ("name", "wafer_size_mm", "die_width_mm", "die_height_mm"):
        if required not in merged:
            raise ScenarioError(f"{_where(source, where + '.' + required)} is required")
    kwargs = {}
    for key, value in merged.items():
        f = _PRODUCT_FIELDS[key]
        if key == "pattern_cycle":
            if not isinstance(value, list) or any(c not in PATTERN_CLASSES for c in value):
                raise ScenarioError(
                    f"{_where(source, where + '.pattern_cycle')} must list WM-811K classes "
                    f"({', '.join(PATTERN_CLASSES)}), got {value!r}"
                )
            kwargs[key] = tuple(value)
        elif key in ("bad_site_lots", "reticle_lots"):
            if not isinstance(value, list) or any(
                isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value
            ):
                raise ScenarioError(
                    f"{_where(source, where + '.' + key)} must list lot numbers >= 1, got {value!r}"
                )
            kwargs[key] = tuple(value)
        elif key == "pattern_mix":
            if not isinstance(value, dict) or not value:
                raise ScenarioError(f"{_where(source, where + '.pattern_mix')} must be a table")
            mix = {}
            for cls, w in value.items():
                if cls not in PATTERN_CLASSES:
                    raise ScenarioError(
                        f"{_where(source, where + '.pattern_mix.' + cls)}: unknown class; "
                        f"expected one of {', '.join(PATTERN_CLASSES)}"
                    )
                w = _check_type(w, float, source, f"{where}.pattern_mix.{cls}")
                if w < 0:
                    raise ScenarioError(f"{_where(source, where + '.pattern_mix.' + cls)} < 0")
                mix[cls] = w
            if sum(mix.values()) <= 0:
                raise ScenarioError(f"{_where(source, where + '.pattern_mix')} sums to 0")
            kwargs[key] = mix
        else:
            kwargs[key] = _check_type(value, f.type, source, f"{where}.{key}")
    product = ProductConfig(**kwargs)
    _validate_product(product, source, where)
    return product


def _validate_product(p: ProductConfig, source: str, where: str) -> None:
    def fail(key: str, what: str) -> ScenarioError:
        return ScenarioError(f"{_where(source, where + '.' + key)} {what}")

    if p.n_sites not in (1, 2, 4, 8, 16):
        raise fail("n_sites", f"must be 1, 2, 4, 8 or 16, got {p.n_sites}")
    if not 3 <= p.n_tests <= _N_PARAM_MAX:
        raise fail("n_tests", f"must lie in 3..{_N_PARAM_MAX}, got {p.n_tests}")
    if not 1 <= p.wafers_per_lot <= 25:
        raise fail("wafers_per_lot", f"must lie in 1..25, got {p.wafers_per_lot}")
    if p.lots < 1:
        raise fail("lots", f"must be >= 1, got {p.lots}")
    if p.assembly_lot_size < 1 or p.strip_rows < 1 or p.strip_cols < 1 or p.ft_sites < 1:
        raise fail("assembly_lot_size", "and strip/ft sizes must be >= 1")
    if not p.code or not all(c.isalnum() for c in p.code):
        raise fail("lot_prefix", f"must be letters and digits only (ECIDs use ':'), got {p.code!r}")
    for name in (
        "short_lot_rate",
        "reticle_lot_rate",
        "bad_site_lot_rate",
        "contact_rate",
        "outlier_rate",
        "retest_other",
        "bond_excursion_rate",
        "ecid_read_fail_rate",
    ):
        value = getattr(p, name)
        if not 0.0 <= value <= 1.0:
            raise fail(name, f"is a probability and must lie in [0, 1], got {value}")
    for name in (
        "latent_base",
        "latent_per_neighbor",
        "latent_outlier",
        "lot_shift_sigma",
        "wafer_shift_sigma",
        "site_offset_sigma",
    ):
        if getattr(p, name) < 0:
            raise fail(name, f"must be >= 0, got {getattr(p, name)}")
    from backend_fab.synth.tester import product_layout

    try:
        product_layout(p)
    except ValueError as exc:
        raise ScenarioError(f"{_where(source, where)}: {exc}") from exc


def scenario_from_dict(raw: dict, source: str = "") -> Scenario:
    """Build and validate a scenario from the parsed TOML (or an equivalent dict)."""
    if not isinstance(raw, dict):
        raise ScenarioError(f"{_where(source, 'top level')} must be a table")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ScenarioError(
            f"{_where(source, unknown[0])} is not a scenario key; known: {', '.join(sorted(_TOP_KEYS))}"
        )
    if "name" not in raw:
        raise ScenarioError(f"{_where(source, 'name')} is required")
    products_raw = raw.get("products")
    if not isinstance(products_raw, list) or not products_raw:
        raise ScenarioError(f"{_where(source, 'products')} must list at least one [[products]]")
    defaults = raw.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ScenarioError(f"{_where(source, 'defaults')} must be a table")
    products = tuple(_product(p, defaults, source, i) for i, p in enumerate(products_raw))
    names = [p.name for p in products]
    codes = [p.code for p in products]
    if len(set(names)) != len(names) or len(set(codes)) != len(codes):
        raise ScenarioError(
            f"{_where(source, 'products')}: product names and lot prefixes must be unique"
        )
    start = raw.get("start", Scenario.start)
    if isinstance(start, str):
        try:
            start = datetime.fromisoformat(start)
        except ValueError as exc:
            raise ScenarioError(f"{_where(source, 'start')}: {exc}") from exc
    if not isinstance(start, datetime):
        raise ScenarioError(f"{_where(source, 'start')} must be a date-time, got {start!r}")
    start = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
    seed = _check_type(raw.get("seed", 0), int, source, "seed")
    if seed < 0:
        raise ScenarioError(f"{_where(source, 'seed')} must be >= 0")
    return Scenario(
        name=_check_type(raw["name"], str, source, "name"),
        products=products,
        seed=seed,
        description=_check_type(raw.get("description", ""), str, source, "description"),
        start=start,
        lot_interval_minutes=_check_type(
            raw.get("lot_interval_minutes", 90.0), float, source, "lot_interval_minutes"
        ),
        source=source,
    )


def _packaged() -> dict[str, Any]:
    root = resources.files("backend_fab.synth") / "scenarios"
    return {
        entry.name[: -len(".toml")]: entry
        for entry in root.iterdir()
        if entry.name.endswith(".toml")
    }


def scenario_names() -> list[str]:
    """Names of the packaged scenarios (``ci``, ``demo``, ``bench-day``)."""
    return sorted(_packaged())


def scenario_path(name: str):
    """The packaged TOML resource of scenario ``name`` (a Traversable)."""
    found = _packaged()
    if name not in found:
        raise ScenarioError(
            f"unknown scenario {name!r}; packaged scenarios: {', '.join(sorted(found))} "
            f"(or give the path of a .toml file)"
        )
    return found[name]


def load_scenario(scenario: str | Path | dict | Scenario) -> Scenario:
    """A packaged scenario name, a TOML path, a dict (parsed TOML) or a Scenario -> Scenario."""
    if isinstance(scenario, Scenario):
        return scenario
    if isinstance(scenario, dict):
        return scenario_from_dict(scenario, source="<dict>")
    path = Path(scenario)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ScenarioError(f"scenario file {path} does not exist")
        text = path.read_bytes()
        source = str(path)
    else:
        resource = scenario_path(str(scenario))
        text = resource.read_bytes()
        source = f"{scenario}.toml"
    try:
        raw = tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"scenario {source}: not valid TOML: {exc}") from exc
    return scenario_from_dict(raw, source=source)
