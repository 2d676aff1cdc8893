"""PAT recipes: the packaged default, canonical hashing, and errors that name the key."""

from __future__ import annotations

import hashlib
import tomllib
from importlib import resources

import pytest

from backend_fab.errors import RecipeError
from backend_fab.pat import REASON_BITS, SPEC, default_recipe, load_recipe


def test_default_recipe_matches_domain_defaults():
    rec = default_recipe()
    bins = {rule: rec.data[rule]["bin"] for rule in REASON_BITS}
    assert bins == {
        "spat": 140,
        "dpat": 141,
        "nnr": 142,
        "iddq_delta": 147,
        "gdbn": 143,
        "reticle": 144,
        "cluster": 145,
        "zpat": 148,
    }
    assert REASON_BITS == {
        "spat": 1,
        "dpat": 2,
        "nnr": 4,
        "iddq_delta": 8,
        "gdbn": 16,
        "reticle": 32,
        "cluster": 64,
        "zpat": 128,
    }
    geo = [r for r in rec.precedence if r in ("nnr", "iddq_delta", "gdbn", "cluster", "reticle")]
    assert geo == ["nnr", "iddq_delta", "gdbn", "cluster", "reticle"]
    assert rec.data["dpat"]["k"] == 6.0 and rec.data["dpat"]["min_samples"] == 50
    assert rec.data["nnr"]["window"] == 5 and rec.data["nnr"]["location_averaging"] == 0.7
    assert rec.data["gdbn"]["fail_count"] == 2 and rec.data["cluster"]["min_size"] == 50
    assert rec.data["alarm"]["pat_loss"] == [0.01, 0.03]


def test_every_key_is_in_the_default_file():
    text = resources.files("backend_fab").joinpath("recipes/default.toml").read_text("utf-8")
    doc = tomllib.loads(text)
    assert set(doc) == set(SPEC)
    for section, keys in SPEC.items():
        assert set(doc[section]) == set(keys), section


def test_hash_is_canonical():
    rec = default_recipe()
    assert rec.hash == hashlib.sha256(rec.canonical_json.encode()).hexdigest()
    assert load_recipe({}).hash == rec.hash
    assert load_recipe({"dpat": {"k": 6}}).hash == rec.hash  # 6 and 6.0 are the same recipe
    assert load_recipe(rec.to_toml()).hash == rec.hash
    reordered = "[dpat]\nmin_samples = 50\nk = 6.0\n\n[gdbn]\nwindow = 3\n"
    assert load_recipe(reordered).hash == rec.hash
    changed = load_recipe({"dpat": {"k": 5.5}})
    assert changed.hash != rec.hash and changed.rule("dpat")["k"] == 5.5
    assert rec.replace(dpat={"k": 5.5}).hash == changed.hash


def test_recipe_from_a_file(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[recipe]\nname = "strict"\n[dpat]\nscope = "lot"\n')
    rec = load_recipe(path)
    assert rec.name == "strict" and rec.rule("dpat")["scope"] == "lot"
    assert rec.source == str(path)
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[dpat\nk = 1")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(bad)


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"dpat": {"kk": 1}}, r"'dpat\.kk' is unknown"),
        ({"dpat": {"k": "six"}}, r"'dpat\.k' must be a number"),
        ({"dpat": {"k": -1.0}}, r"'dpat\.k' must be positive"),
        ({"dpat": {"method": "magic"}}, r"'dpat\.method' must be one of"),
        ({"nnr": {"window": 4}}, r"'nnr\.window' must be odd"),
        ({"gdbn": {"enabled": "yes"}}, r"'gdbn\.enabled' must be true or false"),
        ({"recipe": {"precedence": ["spat"]}}, r"'recipe\.precedence' lacks the enabled rule"),
        ({"recipe": {"precedence": ["foo"]}}, r"'recipe\.precedence' holds 'foo'"),
        ({"gdbn": {"bin": 140}}, r"'gdbn\.bin' is also the bin of rule 'spat'"),
        ({"dpat": {"bin": 1}}, r"'dpat\.bin' must not be a pass bin"),
        ({"alarm": {"pat_loss": [0.05, 0.01]}}, r"'alarm\.pat_loss' must be \[level1, level2\]"),
        ({"cluster": {"min_size": 0}}, r"'cluster\.min_size'"),
        ({"rules": {}}, r"'rules' is not a section"),
        ({"dpat": 3}, r"'dpat' must be a table"),
    ],
)
def test_errors_name_the_key(doc, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe(doc)


def test_disabling_a_rule_drops_it_from_the_precedence():
    rec = load_recipe(
        {
            "zpat": {"enabled": False},
            "recipe": {
                "precedence": ["nnr", "spat", "dpat", "iddq_delta", "gdbn", "cluster", "reticle"]
            },
        }
    )
    assert rec.precedence[0] == "nnr" and "zpat" not in rec.precedence
    with pytest.raises(RecipeError, match="unknown rule"):
        rec.rule("mvpat")
