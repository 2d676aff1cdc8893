"""Run per-lot work in-process, in a local process pool, or on a Dask distributed cluster.

The nightly batch scores lots independently, so the work is a map of one picklable function over
tasks (a task is a small batch of lots, several lots per task to amortise the per-task cost). An
engine yields ``(task, result)`` pairs as tasks finish, in completion order, and never raises for
one failed task: a task that could not run (its worker died, its result could not be pickled)
comes back as a :class:`TaskFailure` in place of the result, so the caller reports those lots and
carries on with the others.

Engines:

* ``local``: in this process, one task after the other (the default; no start-up cost).
* ``process``: a :class:`concurrent.futures.ProcessPoolExecutor` with the ``spawn`` start method
  (polars' thread pool deadlocks in a ``fork``-ed child).
* ``dask``: ``distributed.Client`` on ``scheduler`` (``tcp://host:8786``), or on a
  :class:`distributed.LocalCluster` of ``workers`` single-threaded worker processes when no address
  is given (``pip install backend-fab[dask]``). Workers read the lake by path, so a shared
  filesystem or object store is the only coupling; results (polars frames, PNG bytes) travel back
  to the caller, which alone writes to the lake. ``docs/scale-out.md`` explains a real cluster.
"""

from __future__ import annotations

import math
import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from backend_fab.errors import NightlyError
from backend_fab.machine import cpu_count

ENGINES = ("local", "process", "dask")

__all__ = [
    "ENGINES",
    "Engine",
    "TaskFailure",
    "batched",
    "check_engine_options",
    "default_batch_size",
    "open_engine",
]


@dataclass(frozen=True)
class TaskFailure:
    """A task that produced no result: the exception's type, message and formatted traceback."""

    error_type: str
    message: str
    traceback: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> TaskFailure:
        return cls(
            error_type=type(exc).__name__,
            message=str(exc) or type(exc).__name__,
            traceback="".join(traceback.format_exception(exc)),
        )


def batched(items: Sequence[Any], size: int) -> list[list[Any]]:
    """``items`` cut into consecutive lists of at most ``size`` (>= 1) items."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def default_batch_size(
    n_items: int, n_workers: int, *, tasks_per_worker: int = 3, cap: int = 8
) -> int:
    """Items per task: about ``tasks_per_worker`` tasks per worker (load balance against
    per-task overhead), at most ``cap`` items per task."""
    if n_items <= 0:
        return 1
    return max(1, min(cap, math.ceil(n_items / (max(1, n_workers) * tasks_per_worker))))


def worker_environment(workers: int) -> dict[str, str]:
    """Thread limits for worker processes: the machine's CPUs shared among ``workers``, so that
    polars, numba and BLAS thread pools in every worker do not oversubscribe the cores."""
    threads = str(max(1, cpu_count() // max(1, workers)))
    return {
        "POLARS_MAX_THREADS": threads,
        "NUMBA_NUM_THREADS": threads,
        "OMP_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
    }


def _init_worker(env: dict[str, str]) -> None:
    # runs in a fresh spawn child before any task imports polars or numba
    os.environ.update(env)


class Engine:
    """Maps a function over tasks; use as a context manager (``with open_engine(...) as e``)."""

    name = "engine"

    def __init__(self, workers: int = 1):
        self.workers = max(1, int(workers))

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release workers (no-op for the local engine)."""

    def describe(self) -> str:
        return self.name

    def map_unordered(
        self, fn: Callable[[Any], Any], tasks: Sequence[Any]
    ) -> Iterator[tuple[Any, Any | TaskFailure]]:
        """Yield ``(task, fn(task))`` as tasks complete; a task that fails yields a TaskFailure."""
        raise NotImplementedError


class LocalEngine(Engine):
    """Runs every task in this process, in order."""

    name = "local"

    def __init__(self, workers: int = 1):
        super().__init__(1)

    def map_unordered(self, fn, tasks):
        for task in tasks:
            try:
                result = fn(task)
            except Exception as exc:
                result = TaskFailure.from_exception(exc)
            yield task, result


class ProcessEngine(Engine):
    """A spawn-started process pool on this machine."""

    name = "process"

    def __init__(self, workers: int = 2):
        super().__init__(workers)
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self._pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(worker_environment(self.workers),),
        )

    def describe(self) -> str:
        return f"process pool ({self.workers} spawn workers)"

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def map_unordered(self, fn, tasks):
        from concurrent.futures import as_completed

        futures = {self._pool.submit(fn, task): task for task in tasks}
        for future in as_completed(futures):
            task = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # BrokenProcessPool, pickling errors, ...
                result = TaskFailure.from_exception(exc)
            yield task, result


class DaskEngine(Engine):
    """Dask distributed: an existing scheduler, or a LocalCluster of worker processes."""

    name = "dask"

    def __init__(self, workers: int = 2, scheduler: str | None = None, *, timeout: float = 30.0):
        super().__init__(workers)
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:
            raise NightlyError(
                "the dask engine needs dask.distributed: pip install 'backend-fab[dask]'"
            ) from exc
        self.scheduler = scheduler
        self._cluster = None
        try:
            if scheduler:
                self._client = Client(scheduler, timeout=f"{timeout}s")
            else:
                # env= is applied inside each worker process only (the nanny's pre-spawn
                # variables would also change this process's environment)
                self._cluster = LocalCluster(
                    n_workers=self.workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",  # any free port: never collide with another cluster
                    silence_logs=40,  # logging.ERROR: the batch logs for itself
                    env=worker_environment(self.workers),
                )
                self._client = Client(self._cluster)
        except (OSError, TimeoutError) as exc:
            self.close()
            raise NightlyError(
                f"cannot reach the Dask scheduler at {scheduler!r} ({exc}); start it with "
                f"`dask scheduler` and give its address as --scheduler tcp://HOST:8786"
            ) from exc

    def describe(self) -> str:
        if self.scheduler:
            n = len(self._client.scheduler_info().get("workers", {}))
            return f"dask scheduler {self.scheduler} ({n} workers)"
        return f"dask LocalCluster ({self.workers} worker processes)"

    def close(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def map_unordered(self, fn, tasks):
        from distributed import as_completed

        if not tasks:
            return
        # pure=False: a task reads the lake, whose content may change between nights
        futures = self._client.map(fn, list(tasks), pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        for future in as_completed(futures):
            task = tasks[index[future.key]]
            try:
                result = future.result()
            except Exception as exc:  # KilledWorker, deserialisation errors, ...
                result = TaskFailure.from_exception(exc)
            finally:
                future.release()
            yield task, result


def check_engine_options(name: str, *, workers: int = 2, scheduler: str | None = None) -> None:
    """Raise :class:`NightlyError` for options :func:`open_engine` would refuse (cheap: no
    worker is started), so a batch can refuse bad options before it takes any lock."""
    if name not in ENGINES:
        raise NightlyError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    if scheduler and name != "dask":
        raise NightlyError(f"--scheduler {scheduler!r} needs --engine dask (got --engine {name})")
    if workers < 1:
        raise NightlyError(f"--workers must be >= 1, got {workers}")


def open_engine(name: str, *, workers: int = 2, scheduler: str | None = None) -> Engine:
    """The engine called ``name`` (one of :data:`ENGINES`).

    ``workers`` is the pool size (process) or the LocalCluster size (dask without ``scheduler``);
    the local engine ignores it. Raises :class:`NightlyError` for an unknown name, a scheduler
    address given to a non-dask engine, or a Dask scheduler that cannot be reached.
    """
    check_engine_options(name, workers=workers, scheduler=scheduler)
    if name == "local":
        return LocalEngine()
    if name == "process":
        return ProcessEngine(workers)
    return DaskEngine(workers, scheduler)
