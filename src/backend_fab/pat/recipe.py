"""PAT recipes: TOML documents that choose rules, parameters, bins and precedence.

A recipe is laid over the packaged default recipe (``backend_fab/recipes/default.toml``), checked
key by key against :data:`SPEC` (a :class:`RecipeError` names the bad key and says what it must
be), and hashed: ``recipe_hash`` is the SHA-256 of the canonical JSON of the resolved recipe (every
key present, keys sorted, numbers of float keys as floats), so equivalent files share a hash.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from backend_fab.errors import RecipeError

__all__ = [
    "REASON_BITS",
    "RULES",
    "SPEC",
    "Recipe",
    "default_recipe",
    "load_recipe",
]

#: Every rule the engine knows, and the failure-type bit each one sets (DOMAIN.md §2.6).
REASON_BITS: dict[str, int] = {
    "spat": 1,
    "dpat": 2,
    "nnr": 4,
    "iddq_delta": 8,
    "gdbn": 16,
    "reticle": 32,
    "cluster": 64,
    "zpat": 128,
}
RULES: tuple[str, ...] = tuple(REASON_BITS)


@dataclass(frozen=True)
class P:
    """One recipe key: its type and what values it takes."""

    kind: str  # "str", "int", "float", "bool", "int_list", "str_list", "pair"
    choices: tuple | None = None
    lo: float | None = None  # inclusive bounds for numbers
    hi: float | None = None
    positive: bool = False
    odd: bool = False


_BIN = P("int", lo=0, hi=65534)
_METHOD3 = ("sigma", "robust", "iqr")

SPEC: dict[str, dict[str, P]] = {
    "recipe": {
        "name": P("str"),
        "description": P("str"),
        "insertion": P("str"),
        "pass_bins": P("int_list", lo=0, hi=65534),
        "rebin": P("str", choices=("hbin", "sbin", "both")),
        "precedence": P("str_list", choices=RULES),
    },
    "alarm": {
        "pat_loss": P("pair", lo=0.0, hi=1.0),
        "scope": P("str", choices=("lot", "wafer")),
    },
    "tests": {
        "include": P("int_list", lo=0),
        "exclude": P("int_list", lo=0),
        "pins": P("str", choices=("scalar", "all")),
    },
    "spat": {"enabled": P("bool"), "bin": _BIN},
    "dpat": {
        "enabled": P("bool"),
        "bin": _BIN,
        "scope": P("str", choices=("wafer", "lot")),
        "method": P("str", choices=("robust", "sigma", "iqr", "shape")),
        "k": P("float", positive=True),
        "severity": P("str", choices=("near", "medium", "far")),
        "min_samples": P("int", lo=2),
        "population": P("str", choices=("good_not_spat", "good")),
        "clamp_to_static": P("bool"),
        "clamp_to_spec": P("bool"),
    },
    "nnr": {
        "enabled": P("bool"),
        "bin": _BIN,
        "tests": P("int_list", lo=0),
        "window": P("int", lo=3, hi=15, odd=True),
        "location_averaging": P("float", lo=0.0, hi=1.0, positive=True),
        "method": P("str", choices=_METHOD3),
        "k": P("float", positive=True),
        "min_residuals": P("int", lo=2),
    },
    "iddq_delta": {
        "enabled": P("bool"),
        "bin": _BIN,
        "pre_pattern": P("str"),
        "post_pattern": P("str"),
        "scope": P("str", choices=("wafer", "lot")),
        "method": P("str", choices=_METHOD3),
        "k": P("float", positive=True),
        "min_samples": P("int", lo=2),
    },
    "gdbn": {
        "enabled": P("bool"),
        "bin": _BIN,
        "algorithm": P("str", choices=("squeeze", "weighting")),
        "window": P("int", lo=3, hi=7, odd=True),
        "fail_count": P("int", lo=1),
        "adjacent_weight": P("float", lo=0.0),
        "diagonal_weight": P("float", lo=0.0),
        "weight_threshold": P("float", positive=True),
        "edge": P("str", choices=("auto", "ignore", "good", "bad", "scale")),
        "edge_scale": P("float", positive=True),
        "edge_type": P("str", choices=("adjacent", "corner", "both")),
        "bad_bins": P("int_list", lo=0, hi=65534),
    },
    "cluster": {
        "enabled": P("bool"),
        "bin": _BIN,
        "min_size": P("int"),
        "connectivity": P("int", choices=(4, 8)),
        "outline": P("int", lo=0, hi=10),
        "ignore_lines": P("bool"),
        "light_outline": P("bool"),
        "light_threshold": P("float", positive=True),
        "edge_scale": P("float", positive=True),
        "bad_bins": P("int_list", lo=0, hi=65534),
    },
    "reticle": {
        "enabled": P("bool"),
        "bin": _BIN,
        "field_fail_rate": P("float", lo=0.0, hi=1.0, positive=True),
        "min_fields": P("int", lo=1),
        "bad_bins": P("int_list", lo=0, hi=65534),
    },
    "zpat": {
        "enabled": P("bool"),
        "bin": _BIN,
        "method": P("str", choices=("binomial", "count")),
        "correction": P("str", choices=("bonferroni", "bh")),
        "alpha": P("float", lo=0.0, hi=0.999999, positive=True),
        "threshold_pct": P("float", lo=0.0, hi=100.0),
        "min_wafers": P("int", lo=1),
        "bad_bins": P("int_list", lo=0, hi=65534),
    },
}


def _fail(key: str, what: str, value: Any) -> RecipeError:
    return RecipeError(f"recipe key {key!r} {what}, got {value!r}")


def _check_value(key: str, spec: P, value: Any) -> Any:
    def number(v, integer: bool):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise _fail(key, "must be " + ("an integer" if integer else "a number"), v)
        if integer and not isinstance(v, int):
            raise _fail(key, "must be an integer", v)
        if not integer:
            v = float(v)
            if not math.isfinite(v):
                raise _fail(key, "must be finite", v)
        if spec.lo is not None and v < spec.lo:
            raise _fail(key, f"must be >= {spec.lo}", v)
        if spec.hi is not None and v > spec.hi:
            raise _fail(key, f"must be <= {spec.hi}", v)
        if spec.positive and not v > 0:
            raise _fail(key, "must be positive", v)
        if spec.odd and v % 2 != 1:
            raise _fail(key, "must be odd", v)
        return v

    if spec.kind == "str":
        if not isinstance(value, str):
            raise _fail(key, "must be a string", value)
        out = value
    elif spec.kind == "bool":
        if not isinstance(value, bool):
            raise _fail(key, "must be true or false", value)
        out = value
    elif spec.kind in ("int", "float"):
        out = number(value, spec.kind == "int")
    elif spec.kind in ("int_list", "str_list", "pair"):
        if not isinstance(value, list | tuple):
            raise _fail(key, "must be a list", value)
        if spec.kind == "str_list":
            if not all(isinstance(v, str) for v in value):
                raise _fail(key, "must be a list of strings", value)
            out = list(value)
        elif spec.kind == "int_list":
            out = [number(v, True) for v in value]
        else:
            out = [number(v, False) for v in value]
            if len(out) != 2 or out[0] > out[1]:
                raise _fail(key, "must be [level1, level2] with level1 <= level2", value)
        if spec.choices is not None:
            bad = [v for v in out if v not in spec.choices]
            if bad:
                raise _fail(key, f"holds {bad[0]!r}; choose from {list(spec.choices)}", value)
        return out
    else:  # pragma: no cover - SPEC is static
        raise AssertionError(spec.kind)
    if spec.choices is not None and out not in spec.choices:
        raise _fail(key, f"must be one of {list(spec.choices)}", value)
    return out


def _default_document() -> dict:
    text = resources.files("backend_fab").joinpath("recipes/default.toml").read_text("utf-8")
    return tomllib.loads(text)


def _resolve(document: Mapping, source: str) -> dict:
    if not isinstance(document, Mapping):
        raise RecipeError(f"recipe {source}: expected a table of sections, got {document!r}")
    base = _default_document()
    for section, body in document.items():
        if section not in SPEC:
            raise RecipeError(
                f"recipe key {section!r} is not a section; sections are "
                f"{', '.join('[' + s + ']' for s in SPEC)}"
            )
        if not isinstance(body, Mapping):
            raise RecipeError(f"recipe key {section!r} must be a table ([{section}]), got {body!r}")
        for key, value in body.items():
            if key not in SPEC[section]:
                raise RecipeError(
                    f"recipe key '{section}.{key}' is unknown; keys of [{section}]: "
                    f"{', '.join(SPEC[section])}"
                )
            base[section][key] = value
    out: dict = {}
    for section, keys in SPEC.items():
        out[section] = {}
        for key, spec in keys.items():
            if key not in base.get(section, {}):
                raise RecipeError(
                    f"recipe key '{section}.{key}' is missing from the default recipe"
                )
            out[section][key] = _check_value(f"{section}.{key}", spec, base[section][key])
    _check_recipe(out)
    return out


def _check_recipe(r: dict) -> None:
    prec = r["recipe"]["precedence"]
    if len(set(prec)) != len(prec):
        raise _fail("recipe.precedence", "names a rule twice", prec)
    for rule in RULES:
        if r[rule]["enabled"] and rule not in prec:
            raise RecipeError(
                f"recipe key 'recipe.precedence' lacks the enabled rule {rule!r}; list every "
                f"enabled rule (or set {rule}.enabled = false)"
            )
    if not r["recipe"]["pass_bins"]:
        raise _fail("recipe.pass_bins", "must name at least one good bin", [])
    bins = {}
    for rule in RULES:
        if not r[rule]["enabled"]:
            continue
        b = r[rule]["bin"]
        if b in r["recipe"]["pass_bins"]:
            raise _fail(f"{rule}.bin", "must not be a pass bin", b)
        if b in bins:
            raise _fail(f"{rule}.bin", f"is also the bin of rule {bins[b]!r}", b)
        bins[b] = rule
    size = r["cluster"]["min_size"]
    if size == 0 or size < -100:
        raise _fail(
            "cluster.min_size", "must be a die count (> 0) or a percentage in [-100, 0)", size
        )


@dataclass(frozen=True)
class Recipe:
    """A resolved, validated PAT recipe. Build it with :func:`load_recipe`.

    ``data`` maps section -> key -> value (every key of :data:`SPEC`); treat it as read-only.
    """

    data: dict
    source: str = "built-in"

    @property
    def canonical_json(self) -> str:
        """The text the hash is taken over: sorted keys, no spaces, ASCII."""
        return json.dumps(self.data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    @property
    def hash(self) -> str:
        """``recipe_hash``: SHA-256 (hex) of :attr:`canonical_json`."""
        return hashlib.sha256(self.canonical_json.encode("ascii")).hexdigest()

    @property
    def name(self) -> str:
        return self.data["recipe"]["name"]

    @property
    def pass_bins(self) -> list[int]:
        return list(self.data["recipe"]["pass_bins"])

    @property
    def precedence(self) -> list[str]:
        """Enabled rules in precedence order."""
        return [r for r in self.data["recipe"]["precedence"] if self.data[r]["enabled"]]

    def rule(self, name: str) -> dict:
        """The parameters of rule ``name`` (a copy)."""
        if name not in RULES:
            raise RecipeError(f"unknown rule {name!r}; rules are {', '.join(RULES)}")
        return copy.deepcopy(self.data[name])

    def to_dict(self) -> dict:
        return copy.deepcopy(self.data)

    def replace(self, **sections: Mapping) -> Recipe:
        """A new recipe with some keys changed: ``recipe.replace(dpat={"k": 5.0})``."""
        doc = self.to_dict()
        for section, body in sections.items():
            if section not in doc:
                raise RecipeError(f"recipe key {section!r} is not a section")
            doc[section].update(body)
        return Recipe(_resolve(doc, "replace()"), source=f"{self.source} (modified)")

    def to_toml(self) -> str:
        """The resolved recipe as TOML text (loads back to the same hash)."""
        lines = [f"# PAT recipe {self.name}, recipe_hash {self.hash}"]
        for section, body in self.data.items():
            lines.append(f"\n[{section}]")
            for key, value in body.items():
                lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        return f"Recipe({self.name!r}, hash={self.hash[:12]}, rules={self.precedence})"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def default_recipe() -> Recipe:
    """The packaged default recipe."""
    return Recipe(_resolve({}, "built-in"), source="built-in")


def load_recipe(source: Recipe | Mapping | str | Path | None = None) -> Recipe:
    """Resolve a recipe: None (the default), a :class:`Recipe`, a mapping (parsed TOML), a path
    to a TOML file, or TOML text. Raises :class:`RecipeError` naming the bad key."""
    if source is None:
        return default_recipe()
    if isinstance(source, Recipe):
        return source
    if isinstance(source, Mapping):
        return Recipe(_resolve(source, "mapping"), source="mapping")
    if isinstance(source, str) and ("\n" in source or "=" in source):
        try:
            doc = tomllib.loads(source)
        except tomllib.TOMLDecodeError as exc:
            raise RecipeError(f"recipe text is not valid TOML: {exc}") from exc
        return Recipe(_resolve(doc, "text"), source="text")
    path = Path(source)
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc}") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"recipe {path} is not valid TOML: {exc}") from exc
    return Recipe(_resolve(doc, str(path)), source=str(path))
