"""The documentation names every canonical table and column (docs/data-model.md)."""

from __future__ import annotations

import re

from helpers import REPO

from backend_fab import schema


def test_data_model_names_every_table_and_column():
    # importing these registers their extra tables (state, truth_*, strip_maps)
    import backend_fab.io.maps
    import backend_fab.lake
    import backend_fab.synth.truth  # noqa: F401

    text = (REPO / "docs" / "data-model.md").read_text()
    words = set(re.findall(r"[a-z0-9_]+", text))
    missing = []
    for name, spec in schema.TABLES.items():
        if name.startswith("test_"):
            continue  # tables registered by tests
        if f"`{name}`" not in text and f"### {name}" not in text:
            missing.append(name)
        missing += [f"{name}.{col}" for col in spec.columns if col not in words]
    assert not missing, f"docs/data-model.md does not describe: {', '.join(missing)}"


def test_readme_example_names_real_functions():
    import polars as pl

    import backend_fab as bf
    from backend_fab.frame import ALIASES

    text = (REPO / "README.md").read_text()
    example = text.split("```python", 1)[1].split("```", 1)[0]
    for name in re.findall(r"\.fab\.(\w+)\(", example):
        assert name in ALIASES, f"README uses lf.fab.{name}, which is not a fab alias"
    for name in re.findall(r"\bbf\.(\w+)", example):
        assert hasattr(bf, name), f"README uses bf.{name}, which backend_fab does not have"
    assert hasattr(pl.LazyFrame({"a": [1]}), "fab"), "import backend_fab must register lf.fab"
