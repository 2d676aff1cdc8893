"""Engines: the same results in-process, in a spawn pool and on Dask; failures come back as data."""

from __future__ import annotations

import os

import pytest

from backend_fab.engines import (
    TaskFailure,
    batched,
    default_batch_size,
    open_engine,
)
from backend_fab.errors import NightlyError


def square_sum(task):
    """A picklable task function: sum of squares, and the worker's pid."""
    if task == (-1,):
        raise ValueError("task (-1,) is refused")
    return sum(v * v for v in task), os.getpid()


def test_batched_and_batch_size():
    assert batched([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert batched([], 3) == []
    with pytest.raises(ValueError):
        batched([1], 0)
    assert default_batch_size(0, 2) == 1
    assert default_batch_size(5, 2) == 1
    assert default_batch_size(60, 2) == 8  # capped
    assert default_batch_size(24, 2) == 4


def test_unknown_engine_and_bad_options():
    with pytest.raises(NightlyError, match="unknown engine"):
        open_engine("spark")
    with pytest.raises(NightlyError, match="needs --engine dask"):
        open_engine("process", scheduler="tcp://x:8786")
    with pytest.raises(NightlyError, match="workers"):
        open_engine("process", workers=0)


def test_local_engine_reports_failures_and_keeps_going():
    tasks = [(1, 2), (-1,), (3,)]
    with open_engine("local") as eng:
        out = dict(eng.map_unordered(square_sum, tasks))
    assert out[(1, 2)][0] == 5 and out[(3,)][0] == 9
    failure = out[(-1,)]
    assert isinstance(failure, TaskFailure)
    assert failure.error_type == "ValueError" and "refused" in failure.message
    assert "Traceback" in failure.traceback


def test_process_engine_matches_local_and_uses_other_processes():
    tasks = [(i, i + 1) for i in range(6)] + [(-1,)]
    with open_engine("local") as eng:
        local = dict(eng.map_unordered(square_sum, tasks))
    with open_engine("process", workers=2) as eng:
        assert "2 spawn workers" in eng.describe()
        pooled = dict(eng.map_unordered(square_sum, tasks))
    assert set(pooled) == set(local)
    for task in tasks[:-1]:
        assert pooled[task][0] == local[task][0]
        assert pooled[task][1] != os.getpid()
    assert isinstance(pooled[(-1,)], TaskFailure)


def test_dask_local_cluster_matches_local():
    pytest.importorskip("distributed")
    tasks = [(i,) for i in range(5)] + [(-1,)]
    with open_engine("local") as eng:
        local = dict(eng.map_unordered(square_sum, tasks))
    before = os.environ.get("NUMBA_NUM_THREADS"), os.environ.get("POLARS_MAX_THREADS")
    with open_engine("dask", workers=2) as eng:
        assert "LocalCluster" in eng.describe()
        dist = dict(eng.map_unordered(square_sum, tasks))
        limits = {r for _, r in eng.map_unordered(thread_limits, [(1,), (2,)])}
    # the worker processes share the cores instead of each using all of them
    from backend_fab.machine import cpu_count

    expected = str(max(1, cpu_count() // 2))
    assert limits == {(expected, expected)}
    # ...and this process keeps its own settings (numba refuses a thread count change)
    assert (os.environ.get("NUMBA_NUM_THREADS"), os.environ.get("POLARS_MAX_THREADS")) == before
    assert {t: r[0] for t, r in dist.items() if not isinstance(r, TaskFailure)} == {
        t: r[0] for t, r in local.items() if not isinstance(r, TaskFailure)
    }
    assert isinstance(dist[(-1,)], TaskFailure) and dist[(-1,)].error_type == "ValueError"


def test_dask_unreachable_scheduler_is_a_clear_error():
    pytest.importorskip("distributed")
    with pytest.raises(NightlyError, match="cannot reach the Dask scheduler"):
        # a port nothing listens on; the client gives up after its timeout
        from backend_fab.engines import DaskEngine

        DaskEngine(1, scheduler="tcp://127.0.0.1:9", timeout=2)


def thread_limits(_task):
    import os

    return os.environ.get("POLARS_MAX_THREADS"), os.environ.get("NUMBA_NUM_THREADS")


def test_worker_processes_share_the_cores_instead_of_oversubscribing():
    from backend_fab.engines import worker_environment
    from backend_fab.machine import cpu_count

    expected = str(max(1, cpu_count() // 2))
    assert worker_environment(2)["POLARS_MAX_THREADS"] == expected
    with open_engine("process", workers=2) as eng:
        got = {r for _, r in eng.map_unordered(thread_limits, [(1,), (2,)])}
    assert got == {(expected, expected)}
