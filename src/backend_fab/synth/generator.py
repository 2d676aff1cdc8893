"""``generate_fab``: a whole synthetic back-end fab from a scenario, deterministic for a seed.

Runs (one per lot and insertion, as the lake stores them):

* ``WS1`` per fab lot: ``runs, wafers, die, tests, results, bins`` + ``truth_lots,
  truth_wafers, truth_die, truth_outliers``;
* ``ASSEMBLY`` per assembly lot: ``runs, assembly_steps, genealogy`` + ``truth_units,
  truth_assembly``;
* ``FT1`` and (with burn-in) ``PBI`` per assembly lot (= final-test lot): ``runs, die, tests,
  results, bins, units``.

``run_id`` = sha256 of ``"backend-fab-synth|<scenario config hash>|<product>|<lot>|<insertion>"``
(64 hex digits, the format of ingest's content hashes): the same scenario and seed give the same
ids and bytes; any change to the scenario or seed gives new ids. A lake should hold either the
synthetic runs written directly (:meth:`SynthFab.write_lake`) or the same data ingested from the
STDF files, not both: an ingested file's run id is the hash of its bytes.

Determinism: every lot, wafer and assembly lot draws from its own
``numpy.random.default_rng([seed, product, lot, stage, ...])``, so runs can be generated lazily,
one at a time (:meth:`SynthFab.iter_runs`), in constant memory per run.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from functools import cached_property
from pathlib import Path

import polars as pl

from backend_fab import schema
from backend_fab.layout import Layout
from backend_fab.machine import cpu_count
from backend_fab.synth import truth as _truth  # noqa: F401  (registers the truth tables)
from backend_fab.synth._frames import BufferPool
from backend_fab.synth.assembly import assemble
from backend_fab.synth.scenarios import Scenario, load_scenario
from backend_fab.synth.tester import (
    GoodDie,
    ProductPlan,
    lot_id_of,
    make_plan,
    product_layout,
    sort_lot,
)

__all__ = ["SynthFab", "generate_fab", "product_layout", "synth_run_id"]

#: Every table a synthetic run may carry (canonical and truth), in write order.
RUN_TABLES = (
    "wafers",
    "die",
    "tests",
    "results",
    "bins",
    "assembly_steps",
    "genealogy",
    "units",
    "truth_lots",
    "truth_wafers",
    "truth_die",
    "truth_outliers",
    "truth_units",
    "truth_assembly",
)

Progress = Callable[[str, dict[str, pl.DataFrame]], None]


def default_workers() -> int:
    """Threads for :meth:`SynthFab.iter_runs`: the cores this process may use, at most 4."""
    return max(1, min(4, cpu_count()))


class _Inline:
    """An executor that runs each task at once in the calling thread (``workers=1``)."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed to the caller by result(), as a pool would
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def synth_run_id(scenario: Scenario, product: str, lot_id: str, insertion: str) -> str:
    """The deterministic run id of a synthetic run (64 hex digits)."""
    text = f"backend-fab-synth|{scenario.config_hash}|{product}|{lot_id}|{insertion}"
    return hashlib.sha256(text.encode()).hexdigest()


def generate_fab(scenario_or_config, seed: int | None = None) -> SynthFab:
    """A synthetic fab for a scenario (packaged name, TOML path, dict or :class:`Scenario`).

    ``seed`` overrides the scenario's seed. Nothing is generated until runs are asked for
    (:meth:`SynthFab.iter_runs`, :attr:`SynthFab.runs`, :meth:`SynthFab.table`,
    :meth:`SynthFab.write_lake`).
    """
    return SynthFab(load_scenario(scenario_or_config).with_seed(seed))


class SynthFab:
    """The generated fab: per-run table dicts ready for :meth:`Lake.add_run`, plus layouts.

    Attributes: ``scenario``, ``seed``, ``layouts`` (product -> :class:`Layout`).
    """

    def __init__(self, scenario: Scenario):
        self.scenario = scenario
        self.seed = scenario.seed
        self._runs: list[dict[str, pl.DataFrame]] | None = None

    def __repr__(self) -> str:
        return (
            f"SynthFab(scenario={self.scenario.name!r}, seed={self.seed}, "
            f"products={[p.name for p in self.scenario.products]})"
        )

    @cached_property
    def plans(self) -> list[ProductPlan]:
        return [make_plan(p, i, self.seed) for i, p in enumerate(self.scenario.products)]

    @cached_property
    def layouts(self) -> dict[str, Layout]:
        return {p.name: product_layout(p) for p in self.scenario.products}

    def layouts_frame(self) -> pl.DataFrame:
        """The ``layouts`` table: one row per product."""
        rows = [layout.to_row() for layout in self.layouts.values()]
        return schema.conform("layouts", pl.DataFrame(rows))

    def lot_ids(self, product: str) -> list[str]:
        """Fab lot ids of a product, in order."""
        p = next(p for p in self.scenario.products if p.name == product)
        return [lot_id_of(p, k) for k in range(p.lots)]

    def _lot_starts(self):
        """Wafer-sort start of every (product index, lot index): products interleaved in time."""
        order = sorted(
            ((li, pi) for pi, p in enumerate(self.scenario.products) for li in range(p.lots))
        )
        step = timedelta(minutes=self.scenario.lot_interval_minutes)
        return {(pi, li): self.scenario.start + k * step for k, (li, pi) in enumerate(order)}

    def iter_runs(
        self,
        progress: Progress | None = None,
        workers: int | None = None,
        back_end: bool = True,
    ) -> Iterator[dict[str, pl.DataFrame]]:
        """Generate the runs one at a time (a WS1 run per fab lot; ASSEMBLY, FT1, PBI per assembly
        lot as soon as enough good die have left wafer sort).

        ``back_end=False``: wafer sort only (the WS1 runs, identical to those of the whole fab).

        ``workers``: threads that generate runs ahead of the consumer (default: the usable cores,
        at most 4; 1 = everything in the calling thread). The runs, their order and their bytes
        do not depend on it: every lot and assembly lot draws from its own seeded generator, and
        the heavy steps (numpy, numba kernels, polars) release the GIL, so the threads overlap.
        At most ``workers`` wafer-sort lots are generated ahead, which bounds the memory.

        Each thread recycles the big buffers of the runs it made once the consumer has let go of
        every frame of that run (handling runs one at a time, as :meth:`write_lake` does, is the
        fast path; keeping them all is safe, only slower)."""
        if self._runs is not None:
            for run in self._runs:
                if back_end or run["runs"].item(0, "insertion") == "WS1":
                    yield run
            return
        workers = default_workers() if workers is None else int(workers)
        if workers < 1:
            raise ValueError(f"workers must be >= 1, not {workers}")
        local = threading.local()

        def pool() -> BufferPool:
            # one pool per thread: a pool is not thread-safe, and a thread re-uses its own buffers
            if not hasattr(local, "pool"):
                local.pool = BufferPool()
            return local.pool

        starts = self._lot_starts()
        lots = [
            (plan, li, lot_id)
            for plan in self.plans
            for li, lot_id in enumerate(self.lot_ids(plan.config.name))
        ]

        def sort(plan: ProductPlan, li: int, lot_id: str):
            return sort_lot(
                plan,
                lot_id=lot_id,
                run_id=synth_run_id(self.scenario, plan.config.name, lot_id, "WS1"),
                seed=self.seed,
                lot_index=li,
                start=starts[(plan.index, li)],
                pool=pool(),
            )

        def assemble_lot(plan: ProductPlan, batch: GoodDie, asm_index: int, split: frozenset):
            return self._assemble(plan, batch, asm_index, split, pool())

        executor = _Inline() if workers == 1 else ThreadPoolExecutor(workers, "backend-fab-synth")
        ahead: deque = deque()  # wafer-sort lots submitted, in order
        try:
            state: dict[int, tuple[list[GoodDie], set[int], int]] = {}
            for i, (plan, _, _) in enumerate(lots):
                while len(ahead) < workers and i + len(ahead) < len(lots):
                    ahead.append(executor.submit(sort, *lots[i + len(ahead)]))
                res = ahead.popleft().result()
                if progress:
                    progress("WS1", res.tables)
                yield res.tables
                if not back_end:
                    continue

                p = plan.config
                buffer, split, asm_index = state.get(plan.index, ([], set(), 0))
                buffer.append(res.good)
                good = GoodDie.concat(buffer)
                pos, size = 0, p.assembly_lot_size
                batches = []
                while good.size - pos >= size:
                    cut = pos + size
                    if cut < good.size and good.key[cut - 1] == good.key[cut]:
                        split.add(int(good.key[cut]))
                    # the split wafers known when this batch is cut, as the batch saw them
                    batches.append((good.take(slice(pos, cut)), asm_index, frozenset(split)))
                    asm_index += 1
                    pos += size
                buffer = [good.take(slice(pos, None))] if pos < good.size else []
                last_lot = i + 1 == len(lots) or lots[i + 1][0] is not plan
                if last_lot and buffer and buffer[0].size:
                    batches.append((GoodDie.concat(buffer), asm_index, frozenset(split)))
                    buffer, asm_index = [], asm_index + 1
                state[plan.index] = (buffer, split, asm_index)
                for future in [executor.submit(assemble_lot, plan, *b) for b in batches]:
                    for run in future.result():
                        if progress:
                            progress(run["runs"].item(0, "insertion"), run)
                        yield run
        finally:
            for future in ahead:
                future.cancel()
            executor.shutdown(wait=True, cancel_futures=True)

    def _assemble(
        self,
        plan: ProductPlan,
        batch: GoodDie,
        asm_index: int,
        split: frozenset[int],
        pool: BufferPool,
    ) -> list[dict[str, pl.DataFrame]]:
        """ASSEMBLY, FT1 (and PBI) runs of the ``asm_index``-th assembly lot of a product."""
        p = plan.config
        asm_lot = f"{p.code}A{asm_index + 1:04d}"
        ids = {
            ins: synth_run_id(self.scenario, p.name, asm_lot, ins)
            for ins in ("ASSEMBLY", "FT1", "PBI")
        }
        out = assemble(
            plan,
            batch,
            assembly_lot_id=asm_lot,
            assembly_index=asm_index,
            seed=self.seed,
            run_ids=ids,
            split_wafers=split,
            pool=pool,
        )
        return out.runs

    @property
    def runs(self) -> list[dict[str, pl.DataFrame]]:
        """Every run, generated once and kept in memory (use :meth:`iter_runs` for big fabs)."""
        if self._runs is None:
            self._runs = list(self.iter_runs())
        return self._runs

    def table(self, name: str) -> pl.DataFrame:
        """One table over every run (concatenated; ``layouts`` from the products)."""
        if name == "layouts":
            return self.layouts_frame()
        spec = schema.table(name)
        frames = [run[name] for run in self.runs if name in run]
        if not frames:
            return spec.empty()
        if name == "runs":
            return pl.concat(frames)
        return pl.concat(frames, how="vertical")

    def write_lake(
        self, lake, progress: Progress | None = None, workers: int | None = None
    ) -> list:
        """Write the layouts and every run to ``lake`` (a :class:`~backend_fab.lake.Lake` or a
        path); returns the :class:`AddResult` of each run. Idempotent: a second call adds nothing.
        ``workers``: generator threads (see :meth:`iter_runs`).
        """
        if isinstance(lake, str | Path):
            from backend_fab.lake import Lake

            lake = Lake(lake)
        lake.merge("layouts", self.layouts_frame())
        results = []
        for run in self.iter_runs(workers=workers):
            results.append(lake.add_run(run))
            if progress:
                progress(run["runs"].item(0, "insertion"), run)
        return results
