"""``backend-fab warmup``: every kernel is discovered (new ones too) and compiled on tiny inputs."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
import textwrap

import pytest

from backend_fab.warmup import discover_kernels, warm_one, warmup, warmup_command

FAKE_KERNELS = textwrap.dedent(
    """
    import numba
    import numpy as np

    __all__ = ["wafer_sums", "strange", "explained"]

    @numba.njit(cache=False)
    def _wafer_sums(values, offsets):
        out = np.zeros(offsets.size - 1)
        for g in range(offsets.size - 1):
            for i in range(offsets[g], offsets[g + 1]):
                out[g] += values[i]
        return out

    def wafer_sums(values, offsets):
        v = np.ascontiguousarray(values, dtype=np.float64)
        o = np.ascontiguousarray(offsets, dtype=np.int64)
        if o.size == 0 or o[0] != 0 or o[-1] != v.size:
            raise ValueError("offsets do not match values")
        return _wafer_sums(v, o)

    @numba.njit(cache=False)
    def _strange(q):
        return q * 2

    def strange(quux_must_be_seven):
        if quux_must_be_seven != 7:
            raise ValueError("quux must be 7")
        return _strange(quux_must_be_seven)

    def explained(token):
        if token != "magic":
            raise ValueError("token")
        return _strange(3)

    WARMUP_EXAMPLES = {"explained": lambda: (("magic",), {})}
    """
)


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    pkg = tmp_path / "fake_kernels_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "sums.py").write_text(FAKE_KERNELS)
    (pkg / "_private.py").write_text("import numba\n@numba.njit\ndef f(x):\n    return x\n")
    (pkg / "plain.py").write_text("def helper(x):\n    return x\n")  # no numba: not a kernel module
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "fake_kernels_pkg"
    for name in [m for m in sys.modules if m.startswith("fake_kernels_pkg")]:
        del sys.modules[name]


def test_discovery_finds_new_kernel_modules_and_skips_private_and_plain_ones(fake_package):
    names = [n for n, _ in discover_kernels(fake_package)]
    assert names == ["sums.wafer_sums", "sums.strange", "sums.explained"]


def test_warmup_finds_inputs_uses_examples_and_reports_what_it_cannot(fake_package):
    results = {r.name: r for r in warmup(fake_package)}
    assert results["sums.wafer_sums"].ok
    assert results["sums.explained"].ok and results["sums.explained"].detail == "WARMUP_EXAMPLES"
    bad = results["sums.strange"]
    assert not bad.ok and "no tiny input accepted (quux_must_be_seven)" in bad.detail


def test_every_public_kernel_of_the_package_is_discovered():
    import backend_fab_kernels

    found = {n for n, _ in discover_kernels()}
    expected = set()
    for info in pkgutil.iter_modules(backend_fab_kernels.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"backend_fab_kernels.{info.name}")
        if not any(type(v).__module__.startswith("numba.") for v in vars(module).values()):
            continue
        for name in getattr(module, "__all__", []):
            if inspect.isfunction(getattr(module, name)):
                expected.add(f"{info.name}.{name}")
    assert expected and expected <= found


def test_warm_one_compiles_a_real_kernel():
    kernels = dict(discover_kernels())
    res = warm_one("components.label_components", kernels["components.label_components"])
    assert res.ok, res.detail


@pytest.mark.nightly
def test_warmup_command_compiles_every_kernel(capsys):
    assert warmup_command(quiet=False) == 0, capsys.readouterr().err
