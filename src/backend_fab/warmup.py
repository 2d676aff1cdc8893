"""``backend-fab warmup``: compile every numba kernel once, so the first real run starts fast.

Kernels are discovered, not listed: every public function of every public module of
``backend_fab_kernels`` whose module holds numba dispatchers is called once on tiny inputs, which
compiles it (and, with the on-disk cache on, stores the machine code for later processes). A new
kernel module is therefore warmed up without touching this file.

Inputs are found two ways:

1. A kernel module may define ``WARMUP_EXAMPLES``: a dict ``function name -> callable returning
   (args, kwargs)``; those are used first.
2. Otherwise each required parameter gets candidates chosen by its name from one tiny example
   (two 5 x 5 wafers, as flat die arrays with group offsets, as an int8 state grid, as values) and
   combinations are tried until the validating wrapper accepts one. Wrappers validate before they
   compile, so a rejected combination costs microseconds.

A kernel no candidate fits is reported by name (exit 1), so its author can add an example.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Combinations tried per kernel before giving up.
MAX_TRIES = 400


@dataclass(frozen=True)
class WarmupResult:
    """One kernel: ``ok`` when a call succeeded; ``seconds`` of that call (compile + run)."""

    name: str
    ok: bool
    seconds: float
    detail: str = ""


def _is_dispatcher(obj: Any) -> bool:
    return type(obj).__module__.startswith("numba.") and hasattr(obj, "py_func")


def discover_kernels(package: str = "backend_fab_kernels") -> list[tuple[str, Callable]]:
    """``(module.function, callable)`` for every public kernel entry point, sorted by name."""
    pkg = importlib.import_module(package)
    found: list[tuple[str, Callable]] = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name in {"tests", "naive"}:
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        members = vars(module)
        if not any(_is_dispatcher(v) for v in members.values()):
            continue
        names = getattr(module, "__all__", None) or [n for n in members if not n.startswith("_")]
        for name in names:
            obj = members.get(name)
            if obj is None:
                continue
            if _is_dispatcher(obj) or (
                inspect.isfunction(obj) and obj.__module__ == module.__name__
            ):
                found.append((f"{info.name}.{name}", obj))
    return found


class _Example:
    """Two tiny wafers in every representation a kernel wrapper takes."""

    def __init__(self):
        import numpy as np

        ny = nx = 5
        grid = np.zeros((2, ny, nx), dtype=np.int8)
        for iy, ix in ((0, 0), (0, 4), (4, 0), (4, 4)):
            grid[:, iy, ix] = -1  # corners off the wafer
        grid[0, 1, 1] = grid[0, 1, 2] = grid[0, 2, 2] = 1
        grid[1, 3, 1] = grid[1, 2, 3] = 1
        self.grid = grid
        ws, iys, ixs = np.nonzero(grid >= 0)
        self.x = (ixs - 2).astype(np.int32)
        self.y = (iys - 2).astype(np.int32)
        self.fail = grid[ws, iys, ixs] == 1
        n0 = int((ws == 0).sum())
        self.offsets = np.array([0, n0, ws.size], dtype=np.int64)
        n = ws.size
        self.values = np.linspace(0.5, 2.5, n) + 0.1 * np.sin(np.arange(n))
        self.bins = np.where(self.fail, 5, 1).astype(np.int32)
        self.sites = (np.arange(n) % 4).astype(np.int16)
        self.value_grid = np.where(
            grid >= 0, 1.0 + 0.01 * np.arange(grid.size).reshape(grid.shape), np.nan
        )
        self.labels = (grid == 1).astype(np.int32)
        self.n_labels = np.ones(2, dtype=np.int64)
        self.rows = np.vstack([np.linspace(0, 1, 8), np.linspace(1, 0, 8)])
        self.bool_grid = grid == 1
        self.buf = np.arange(64, dtype=np.uint8)
        self.starts = np.array([0, 4, -1, 8], dtype=np.int64)
        self.counts = np.array([1, 2, 0, 1], dtype=np.int64)
        self.pred = np.array([-1, 0, -1, 2], dtype=np.int64)
        self.keys = np.array([5, 3, 5, 1], dtype=np.int64)
        self.codes = np.array([1, 2, 1, 3], dtype=np.uint8)
        # wrappers cast to their dtypes and numba compiles per dtype and ndim, not per size, so
        # empty arrays compile the same machine code as real ones and satisfy any size check
        self.empty = np.zeros(0, dtype=np.int64)
        self.plane_index = np.zeros((ny, nx), dtype=np.int64)  # a per-cell index, one wafer plane

    def candidates(self, name: str) -> list[Any]:
        import numpy as np

        n = name.lower()
        c: list[Any] = []
        if re.search(r"(endian|latin|^use_|^with_|^is_|^has_|^allow)", n):
            c += [False, True]
        if re.search(r"(^buf|buffer|^raw|^data$|bytes$)", n):
            c.append(self.buf)
        if re.search(r"offsets?$", n):
            c += [self.offsets, self.starts]
        if re.search(r"(starts?$|^pos)", n):
            c.append(self.starts)
        if re.search(r"(position|index|zone|ring)", n):
            c.append(self.plane_index)
        if re.search(r"(counts?$|lengths?$|^sizes$)", n):
            c += [self.counts, self.n_labels]
        if re.search(r"(pred|parent|prev)", n):
            c.append(self.pred)
        if re.search(r"(keys?$|ids$)", n):
            c.append(self.keys)
        if re.search(r"(types|kinds|codes)$", n):
            c.append(self.codes)
        if re.search(r"^next_", n):
            c.append(0)
        if n in {"x", "xs", "ix", "col", "cols", "die_x"}:
            c.append(self.x)
        if n in {"y", "ys", "iy", "row", "rows", "die_y"}:
            c.append(self.y)
        if n == "labels":
            c.append(self.labels)
        if n in {"n_labels", "counts"}:
            c.append(self.n_labels)
        if re.search(r"(fail|bad|good|pass|mask|flag|^is_|^has_)", n):
            c += [self.fail, self.grid, self.bool_grid]
        if re.search(r"(grid|state|stack|map)", n):
            c += [self.grid, self.value_grid, self.bool_grid]
        if re.search(r"(value|data|residual|^z$|^v$|measure|param)", n):
            c += [self.values, self.value_grid, self.rows]
        if re.search(r"bin", n):
            c.append(self.bins)
        if re.search(r"(site|head)", n):
            c += [self.sites, self.codes]
        if re.search(r"slot", n):
            c += [np.full(4, -1, dtype=np.int64), np.full(65536, -1, dtype=np.int64)]
        if re.search(r"^(n|k|m|nx|ny|n_\w+|size|window|lag|max_\w+|min_\w+|width|height)$", n):
            c += [4, 2, 5, 3]
        if re.search(r"(alpha|threshold|limit|^lo|^hi|rate|frac|sigma|factor|^p$)", n):
            c += [0.5, 3.0]
        # anything else: the common shapes, most likely first
        c += [
            self.values,
            self.x,
            self.empty,
            self.fail,
            self.grid,
            self.offsets,
            self.rows,
            3,
            0.5,
            False,
        ]
        unique: list[Any] = []
        for v in c:
            if not any(v is u for u in unique):
                unique.append(v)
        return unique


def _required(func: Callable) -> list[str]:
    target = func.py_func if _is_dispatcher(func) else func
    params = inspect.signature(target).parameters.values()
    return [
        p.name
        for p in params
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


def _emptied(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.ndarray):
        return np.zeros((0,) * value.ndim, dtype=value.dtype)
    return value


def _by_rank(sizes: list[int]):
    """Index tuples into candidate pools, most likely first: ordered by the sum of the indices
    (every parameter's first candidate, then one parameter on its second, ...)."""

    def with_sum(pos: int, left: int):
        if pos == len(sizes):
            if left == 0:
                yield ()
            return
        for i in range(min(left, sizes[pos] - 1) + 1):
            for rest in with_sum(pos + 1, left - i):
                yield (i, *rest)

    for total in range(sum(s - 1 for s in sizes) + 1):
        yield from with_sum(0, total)


def warm_one(name: str, func: Callable, example: _Example | None = None) -> WarmupResult:
    """Call ``func`` once on tiny inputs (see the module doc)."""
    example = example or _Example()
    module = importlib.import_module(func.__module__)
    explicit = getattr(module, "WARMUP_EXAMPLES", {}).get(name.rsplit(".", 1)[-1])
    last_error = "no candidate inputs"
    t0 = time.perf_counter()
    if explicit is not None:
        args, kwargs = explicit()
        try:
            func(*args, **kwargs)
            return WarmupResult(name, True, time.perf_counter() - t0, "WARMUP_EXAMPLES")
        except Exception as exc:
            last_error = f"WARMUP_EXAMPLES failed: {type(exc).__name__}: {exc}"
    try:
        required = _required(func)
    except (TypeError, ValueError) as exc:
        return WarmupResult(name, False, 0.0, f"no signature: {exc}")
    pools = [example.candidates(p) for p in required]
    first_error = None

    def combos():
        for tries, idx in enumerate(_by_rank([len(p) for p in pools])):
            if tries >= MAX_TRIES:
                break
            yield [pool[i] for pool, i in zip(pools, idx, strict=True)]
        # last resort: each parameter's likeliest candidate, arrays emptied (same dtype/ndim)
        yield [_emptied(pool[0]) for pool in pools]

    for combo in combos():
        t0 = time.perf_counter()
        try:
            func(*combo)
        except Exception as exc:
            if first_error is None:  # the likeliest inputs' complaint says the most
                first_error = (
                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                )
            continue
        return WarmupResult(name, True, time.perf_counter() - t0)
    return WarmupResult(
        name,
        False,
        0.0,
        f"no tiny input accepted ({', '.join(required)}): {first_error or last_error}",
    )


def warmup(package: str = "backend_fab_kernels") -> list[WarmupResult]:
    """Compile (call once) every discovered kernel; one result per kernel."""
    example = _Example()
    return [warm_one(name, func, example) for name, func in discover_kernels(package)]


def warmup_command(quiet: bool = False) -> int:
    """``backend-fab warmup``: 0 when every kernel compiled, 1 when some could not be warmed."""
    import sys

    try:
        kernels = discover_kernels()
    except ImportError as exc:
        print(f"error: cannot import the kernels package: {exc}", file=sys.stderr)
        return 2
    example = _Example()
    results = []
    t0 = time.perf_counter()
    for name, func in kernels:
        res = warm_one(name, func, example)
        results.append(res)
        if not quiet:
            status = f"{res.seconds:7.2f} s" if res.ok else "  FAILED "
            print(
                f"{status}  {name}" + (f"  ({res.detail})" if not res.ok else ""), file=sys.stderr
            )
    failed = [r for r in results if not r.ok]
    if not quiet or failed:
        print(
            f"warmed {len(results) - len(failed)} of {len(results)} kernels in "
            f"{time.perf_counter() - t0:.1f} s"
            + (f"; not warmed: {', '.join(r.name for r in failed)}" if failed else ""),
            file=sys.stderr,
        )
    return 1 if failed else 0
