"""The nightly recipe: what the batch computes and when it raises an alarm (a TOML file).

Sections:

* ``[pat]``: the PAT recipe (:mod:`backend_fab.pat.recipe`: ``[pat.recipe]``, ``[pat.dpat]``,
  ...), laid over the packaged default PAT recipe; or ``pat_file = "pat.toml"`` (relative to the
  nightly recipe) naming a PAT recipe file. It also gives the pass bins and the PAT yield-loss
  alarm levels (``[pat.alarm] pat_loss``).
* ``[scoring]``: spatial settings, stacked-map and site-to-site gates, history for SYL/SBL.
* ``[alarms]``: the thresholds that turn scores into alarms, two levels each (1 = engineering
  review, 2 = hold / MRB, as AEC-Q002 uses them; DOMAIN.md §1.6). Every default marked [U] in
  DOMAIN.md is a parameter here.

The recipe hash (:attr:`NightlyRecipe.hash`) is a SHA-256 over the fully resolved recipe
(defaults filled in, keys sorted, the PAT recipe by its own hash), so two files that mean the same
thing share a hash. ``scores`` and ``alarms`` rows carry it; ``dispositions`` rows carry the PAT
recipe's hash (:attr:`NightlyRecipe.pat_hash`), as :func:`backend_fab.pat.run_pat` writes them. A
different recipe scores every lot again under its own hash, side by side with the old scores.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from backend_fab.errors import RecipeError

BUILTIN = "built-in"


@dataclass(frozen=True)
class Scoring:
    """How lots are scored."""

    #: connectivity of fail clusters: 4 (rook) or 8 (queen) (DOMAIN §3.1)
    connectivity: int = 8
    #: smallest cluster counted: max(min_cluster_size, round(n_die * min_cluster_fraction))
    min_cluster_size: int = 5
    min_cluster_fraction: float = 0.003
    #: join-count permutation test: shuffles per wafer and significance level (DOMAIN §3.2)
    cluster_permutations: int = 199
    cluster_alpha: float = 0.01
    #: stacked map: null hypothesis ("wafer": each wafer's own fail rate) and BH false-discovery rate
    stack_null: str = "wafer"
    stack_fdr: float = 0.01
    #: site-to-site: strata for the CMH test, significance on BH-adjusted p, effect-size gate
    site_strata: str | None = "wafer_ring"
    site_alpha: float = 0.01
    site_min_delta: float = 0.02
    #: Monte-Carlo samples of the site x pass/fail chi-square when expected counts are small
    site_mc_samples: int = 1999
    #: SYL/SBL: limits are taken from the ``limits`` table when present, else computed from at
    #: least ``history_min_lots`` (AEC-Q002: six or more), at most ``history_max_lots``, lots of
    #: the product tested before the night; ``limits_insertion``: runs whose insertion starts so
    #: take part ("" = every run); methods as backend_fab.limits.METHODS. Bin fractions vary more
    #: from lot to lot than a binomial allows, hence beta-binomial SBL by default [U]
    history_min_lots: int = 6
    history_max_lots: int = 30
    limits_insertion: str = "WS"
    syl_method: str = "auto"
    sbl_method: str = "beta_binomial"
    #: fail bins watched by SBL (empty: every failing bin seen in the history)
    sbl_bins: tuple[int, ...] = ()
    #: wafer pattern classes are only trusted above this probability
    pattern_min_probability: float = 0.5


@dataclass(frozen=True)
class Alarms:
    """Alarm thresholds; pairs are (level 1, level 2)."""

    #: join-count z of a wafer's fail map (one-sided; 3.09 = alpha 0.001, DOMAIN §3.2) [U]
    cluster_z: tuple[float, float] = (3.09, 6.0)
    #: ...and the wafer's largest cluster must reach this many die for the alarm [U]
    cluster_min_die: tuple[int, int] = (10, 50)
    #: stacked-map hot spots (BH-significant locations) of a lot, count for level 1 / 2 [U]
    hot_spots: tuple[int, int] = (1, 10)
    #: flagged sites (significant, effect-size gated) of a lot for level 1 / 2 [U]
    site_flags: tuple[int, int] = (1, 2)
    #: pattern class -> alarm level; classes not named raise nothing
    patterns: dict[str, int] = field(
        default_factory=lambda: {
            "Scratch": 2,
            "Near-full": 2,
            "Edge-Ring": 1,
            "Center": 1,
            "Donut": 1,
            "Loc": 1,
            "Edge-Loc": 1,
        }
    )
    #: SYL/SBL: level reached by the lot (or a wafer) against the limits raises an alarm
    syl: bool = True
    sbl: bool = True


@dataclass(frozen=True)
class NightlyRecipe:
    """A resolved nightly recipe. Build it with :func:`load_recipe`."""

    scoring: Scoring
    alarms: Alarms
    #: the resolved PAT recipe (backend_fab.pat.recipe.Recipe)
    pat: Any
    source: str = BUILTIN

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe; the PAT part in full, with its hash."""
        return {
            "scoring": asdict(self.scoring),
            "alarms": asdict(self.alarms),
            "pat": self.pat.to_dict(),
            "pat_hash": self.pat.hash,
        }

    @property
    def hash(self) -> str:
        """``recipe_hash`` of scores and alarms: SHA-256 (hex) of the resolved recipe."""
        doc = {"scoring": asdict(self.scoring), "alarms": asdict(self.alarms), "pat": self.pat.hash}
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=list)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def pat_hash(self) -> str:
        """``recipe_hash`` of the dispositions: the PAT recipe's own hash."""
        return self.pat.hash

    @property
    def pass_bins(self) -> list[int]:
        """Hard bins of good die (the PAT recipe's ``recipe.pass_bins``)."""
        return list(self.pat.pass_bins)

    @property
    def pat_loss_levels(self) -> tuple[float, float]:
        """PAT yield loss (share of tested die) for a level 1 / level 2 alarm."""
        lo, hi = self.pat.data["alarm"]["pat_loss"]
        return float(lo), float(hi)


def _section(cls, data: dict[str, Any], name: str):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise RecipeError(
            f"recipe [{name}]: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}"
        )
    defaults = cls()
    kwargs = {}
    for key, value in data.items():
        default = getattr(defaults, key)
        kwargs[key] = _coerce(f"[{name}].{key}", value, default)
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise RecipeError(f"recipe [{name}]: {exc}") from exc
    _check(name, obj)
    return obj


def _coerce(where: str, value: Any, default: Any) -> Any:
    if isinstance(default, tuple) or (default is None and isinstance(value, list)):
        if not isinstance(value, list | tuple):
            raise RecipeError(f"recipe {where}: expected a list, got {value!r}")
        return tuple(value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise RecipeError(f"recipe {where}: expected a table, got {value!r}")
        return dict(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise RecipeError(f"recipe {where}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(value, bool) and isinstance(value, int):
        return value
    if (
        isinstance(default, float)
        and isinstance(value, int | float)
        and not isinstance(value, bool)
    ):
        return float(value)
    if default is None or isinstance(value, type(default)):
        return value
    raise RecipeError(f"recipe {where}: expected {type(default).__name__}, got {value!r}")


def _check(name: str, obj: Any) -> None:
    if isinstance(obj, Scoring):
        if obj.connectivity not in (4, 8):
            raise RecipeError(
                f"recipe [scoring].connectivity must be 4 or 8, got {obj.connectivity}"
            )
        if obj.stack_null not in ("lot", "wafer"):
            raise RecipeError(
                f"recipe [scoring].stack_null must be 'lot' or 'wafer', got {obj.stack_null!r}"
            )
        if not 0 < obj.stack_fdr < 1:
            raise RecipeError(f"recipe [scoring].stack_fdr must lie in (0, 1), got {obj.stack_fdr}")
        if obj.site_strata not in (None, "wafer", "ring", "wafer_ring"):
            raise RecipeError(
                f"recipe [scoring].site_strata must be wafer, ring or wafer_ring, got {obj.site_strata!r}"
            )
        for key, lo in (
            ("site_mc_samples", 99),
            ("cluster_permutations", 0),
            ("min_cluster_size", 1),
        ):
            if getattr(obj, key) < lo:
                raise RecipeError(
                    f"recipe [scoring].{key} must be >= {lo}, got {getattr(obj, key)}"
                )
        for key in (
            "site_alpha",
            "cluster_alpha",
            "pattern_min_probability",
            "min_cluster_fraction",
        ):
            if not 0 <= getattr(obj, key) <= 1:
                raise RecipeError(
                    f"recipe [scoring].{key} must lie in [0, 1], got {getattr(obj, key)}"
                )
        if not 2 <= obj.history_min_lots <= obj.history_max_lots:
            raise RecipeError(
                "recipe [scoring]: need 2 <= history_min_lots <= history_max_lots, got "
                f"{obj.history_min_lots} and {obj.history_max_lots}"
            )
        from backend_fab.limits import METHODS

        for key in ("syl_method", "sbl_method"):
            if getattr(obj, key) not in METHODS:
                raise RecipeError(
                    f"recipe [scoring].{key} must be one of {', '.join(METHODS)}, got {getattr(obj, key)!r}"
                )
    if isinstance(obj, Alarms):
        for key in ("cluster_z", "cluster_min_die", "hot_spots", "site_flags"):
            pair = getattr(obj, key)
            if len(pair) != 2 or pair[0] > pair[1]:
                raise RecipeError(
                    f"recipe [alarms].{key} must be [level1, level2] with level1 <= level2, got {list(pair)}"
                )
        from backend_fab.patterns import PATTERN_CLASSES, UNKNOWN

        for cls_name, level in obj.patterns.items():
            if cls_name not in (*PATTERN_CLASSES, UNKNOWN):
                raise RecipeError(
                    f"recipe [alarms].patterns: unknown class {cls_name!r}; classes are "
                    f"{', '.join((*PATTERN_CLASSES, UNKNOWN))}"
                )
            if level not in (1, 2):
                raise RecipeError(
                    f"recipe [alarms].patterns.{cls_name} must be 1 or 2, got {level!r}"
                )


def recipe_from_dict(
    data: dict[str, Any], source: str = BUILTIN, base_dir: Path | None = None
) -> NightlyRecipe:
    """Resolve a recipe document (the parsed TOML) into a :class:`NightlyRecipe`."""
    from backend_fab.pat.recipe import load_recipe as load_pat_recipe

    unknown = sorted(set(data) - {"scoring", "alarms", "pat", "pat_file", "name", "description"})
    if unknown:
        raise RecipeError(
            f"recipe {source}: unknown key {unknown[0]!r}; the sections are [scoring], [alarms] "
            f"and [pat] (or pat_file = PATH)"
        )
    scoring = _section(Scoring, dict(data.get("scoring", {})), "scoring")
    alarms = _section(Alarms, dict(data.get("alarms", {})), "alarms")
    if "pat" in data and "pat_file" in data:
        raise RecipeError(f"recipe {source}: give the PAT recipe as [pat] or as pat_file, not both")
    if "pat_file" in data:
        pat_path = Path(data["pat_file"])
        if not pat_path.is_absolute() and base_dir is not None:
            pat_path = base_dir / pat_path
        pat = load_pat_recipe(pat_path)
    else:
        try:
            pat = load_pat_recipe(dict(data.get("pat", {})))
        except RecipeError as exc:
            raise RecipeError(f"recipe {source} [pat]: {exc}") from exc
    return NightlyRecipe(scoring=scoring, alarms=alarms, pat=pat, source=source)


def load_recipe(path: str | Path | None = None) -> NightlyRecipe:
    """Read a recipe TOML (None: the built-in defaults). Raises RecipeError naming the key."""
    if path is None:
        return recipe_from_dict({}, BUILTIN)
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {p}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"recipe {p} is not valid TOML: {exc}") from exc
    return recipe_from_dict(data, str(p), base_dir=p.parent)
