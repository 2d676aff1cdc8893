"""The nightly recipe: sections, validation naming the key, hashes that mean something."""

from __future__ import annotations

import pytest

from backend_fab.errors import RecipeError
from backend_fab.nightly.recipe import load_recipe, recipe_from_dict
from backend_fab.pat import load_recipe as load_pat_recipe


def test_defaults_and_hashes():
    r = load_recipe()
    assert r.source == "built-in"
    assert r.pass_bins == [1] and r.pat_loss_levels == (0.01, 0.03)
    assert r.pat_hash == load_pat_recipe(None).hash
    assert len(r.hash) == 64 and r.hash != r.pat_hash
    # equivalent documents share a hash; any change of meaning changes it
    assert recipe_from_dict({"scoring": {"stack_fdr": 0.01}}).hash == r.hash
    assert recipe_from_dict({"scoring": {"stack_fdr": 0.05}}).hash != r.hash
    changed_pat = recipe_from_dict({"pat": {"dpat": {"k": 5.0}}})
    assert changed_pat.pat_hash != r.pat_hash and changed_pat.hash != r.hash
    assert r.to_dict()["pat_hash"] == r.pat_hash


def test_recipe_file_with_a_pat_file_beside_it(tmp_path):
    (tmp_path / "pat.toml").write_text("[dpat]\nk = 5.0\n")
    (tmp_path / "night.toml").write_text(
        'pat_file = "pat.toml"\n[alarms]\ncluster_z = [3.0, 5.0]\npatterns = { Scratch = 2 }\n'
    )
    r = load_recipe(tmp_path / "night.toml")
    assert r.pat.data["dpat"]["k"] == 5.0 and r.alarms.cluster_z == (3.0, 5.0)
    assert r.alarms.patterns == {"Scratch": 2}
    assert r.source == str(tmp_path / "night.toml")
    inline = recipe_from_dict(
        {
            "pat": {"dpat": {"k": 5.0}},
            "alarms": {"cluster_z": [3.0, 5.0], "patterns": {"Scratch": 2}},
        }
    )
    assert inline.hash == r.hash


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"scoring": {"nope": 1}}, "unknown key 'nope'"),
        ({"scoring": {"connectivity": 6}}, "connectivity must be 4 or 8"),
        ({"scoring": {"site_alpha": 2}}, "site_alpha must lie in [0, 1]"),
        ({"scoring": {"history_min_lots": 40}}, "history_min_lots"),
        ({"scoring": {"sbl_method": "magic"}}, "sbl_method must be one of"),
        ({"alarms": {"cluster_z": [5.0, 3.0]}}, "cluster_z must be [level1, level2]"),
        ({"alarms": {"patterns": {"Blob": 1}}}, "unknown class 'Blob'"),
        ({"alarms": {"patterns": {"Scratch": 3}}}, "patterns.Scratch must be 1 or 2"),
        ({"alarms": {"syl": "yes"}}, "expected true or false"),
        ({"pat": {"dpat": {"k": "x"}}}, "dpat.k"),
        ({"bogus": {}}, "unknown key 'bogus'"),
        ({"pat": {}, "pat_file": "x.toml"}, "not both"),
    ],
)
def test_bad_recipes_name_the_key(doc, words):
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(doc)
    assert words in str(err.value)


def test_unreadable_recipe_files(tmp_path):
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[scoring\n")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(bad)
