"""Lake ingest: mixed folders, idempotence, failures that leave nothing behind, the CLI, plugins."""

from __future__ import annotations

import bz2
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from backend_fab import ingest, schema
from backend_fab.cli import main
from backend_fab.ingest import (
    STATUS_ADDED,
    STATUS_ALREADY,
    STATUS_FAILED,
    Ingester,
    ingest_command,
    ingest_paths,
)
from backend_fab.io.stdf_write import write_records, write_stdf
from backend_fab.lake import Lake

UTC = dt.UTC


def make_run(lot: str, n_parts: int = 6, n_tests: int = 3, wafer: str | None = "W01") -> dict:
    """A small wafer-sort run as canonical tables (deterministic for its arguments)."""
    parts = list(range(n_parts))
    die = pl.DataFrame(
        {
            "run_id": "r",
            "part_seq": parts,
            "wafer_id": [wafer] * n_parts,
            "head": [1] * n_parts,
            "site": [p % 2 for p in parts],
            "x": [p % 3 for p in parts],
            "y": [p // 3 for p in parts],
            "hbin": [1 if p % 4 else 2 for p in parts],
            "sbin": [10 if p % 4 else 20 for p in parts],
            "passed": [bool(p % 4) for p in parts],
            "part_id": [str(p + 1) for p in parts],
        }
    )
    results = pl.DataFrame(
        {
            "run_id": "r",
            "part_seq": [p for p in parts for _ in range(n_tests)],
            "test_num": [100 + t for _ in parts for t in range(n_tests)],
            "pin": -1,
            "kind": "P",
            "value": [float(p) + t / 4 for p in parts for t in range(n_tests)],
            "test_flags": 0,
            "parm_flags": 0,
            "passed": True,
        }
    )
    tests = pl.DataFrame(
        {
            "run_id": "r",
            "test_num": [100 + t for t in range(n_tests)],
            "kind": "P",
            "test_name": [f"T{t}" for t in range(n_tests)],
            "lo_limit": -1.0,
            "hi_limit": 100.0,
            "units": "V",
        }
    )
    runs = pl.DataFrame(
        {
            "run_id": ["r"],
            "product": ["PROD"],
            "lot_id": [lot],
            "insertion": ["WS1"],
            "tester": ["T1"],
            "start_time": [dt.datetime(2024, 5, 1, 8, 0, tzinfo=UTC)],
            "finish_time": [dt.datetime(2024, 5, 1, 9, 0, tzinfo=UTC)],
        }
    )
    wafers = pl.DataFrame({"run_id": ["r"], "wafer_id": [wafer]}) if wafer else None
    return {"runs": runs, "die": die, "results": results, "tests": tests, "wafers": wafers}


def stdf_bytes(lot: str, byte_order: str = "<", **kw) -> bytes:
    buf = io.BytesIO()
    write_stdf(make_run(lot, **kw), buf, byte_order)
    return buf.getvalue()


def _zip(data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("inner.stdf", data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def contents() -> dict[str, bytes]:
    return {lot: stdf_bytes(lot, "<" if i % 2 else ">") for i, lot in enumerate("ABCDE")}


@pytest.fixture
def mixed(tmp_path, contents) -> tuple[Path, dict[str, str], list[str]]:
    """A folder of good (plain, gz, bz2, zip, nested) and bad (cut, junk, empty) files."""
    root = tmp_path / "drop"
    (root / "sub" / "deeper").mkdir(parents=True)
    good = {
        "b.stdf.gz": gzip.compress(contents["B"]),
        "c.std": bz2.compress(contents["C"]),  # detected by magic number, not by name
        "d.zip": _zip(contents["D"]),
        "sub/deeper/e.stdf": contents["E"],
    }
    bad = {
        "cut.stdf": stdf_bytes("CUT")[:-37],
        "cut.stdf.gz": gzip.compress(stdf_bytes("CUTGZ"))[:-20],
        "junk.stdf": b"this is not STDF at all\n" * 10,
        "empty.stdf": b"",
    }
    for name, data in {**good, **bad}.items():
        (root / name).write_bytes(data)
    (root / ".hidden.stdf").write_bytes(contents["A"])  # skipped: hidden
    ids = {
        name: hashlib.sha256(contents[k]).hexdigest() for name, k in zip(good, "BCDE", strict=True)
    }
    return root, ids, sorted(bad)


def _lake_runs(lake: Lake) -> set[str]:
    return lake.run_ids()


def test_mixed_folder_ingests_good_files_and_reports_bad_ones(tmp_path, mixed, capsys):
    root, ids, bad = mixed
    lake_path = tmp_path / "lake"
    code = ingest_command([root], lake_path, workers=1, quiet=True)
    assert code == 1
    err = capsys.readouterr().err
    lake = Lake(lake_path)
    assert _lake_runs(lake) == set(ids.values())
    # one run per good file, all its parts and results, the reader's run identity
    die = lake.read("die")
    assert die.group_by("run_id").len()["len"].to_list() == [6] * 4
    assert lake.read("results").height == 4 * 6 * 3
    runs = lake.read("runs")
    assert set(runs["status"]) == {"ok"}
    assert set(runs["source_path"]) == {str((root / n).resolve()) for n in ids}
    assert (
        runs.filter(pl.col("source_path").str.ends_with("b.stdf.gz"))["source_size"].item()
        == (root / "b.stdf.gz").stat().st_size
    )
    # nothing of a failed file, not even invisible orphans
    assert lake.orphans() == {}
    assert not any(lot.startswith("CUT") for lot in runs["lot_id"])
    # every failure listed with its reason, file and where
    for name in bad:
        assert f"FAILED {root / name}" in err
    assert "not a recognised format" in err
    assert "empty file" in err
    assert "truncated" in err and "byte offset" in err
    assert ".hidden" not in err


def test_rerun_adds_nothing_and_says_so(tmp_path, mixed):
    root, ids, bad = mixed
    lake = Lake(tmp_path / "lake")
    first = ingest_paths([root], lake, workers=1, progress=False)
    assert {f.status for f in first.files} == {STATUS_ADDED, STATUS_FAILED}
    versions = {name: lake.version(name) for name in lake.tables()}
    again = ingest_paths([root], lake, workers=1, progress=False)
    by_name = {Path(f.path).name: f for f in again.files}
    for name in ids:
        f = by_name[Path(name).name]
        assert f.status == STATUS_ALREADY
        assert "already ingested" in f.reason
        assert f.run_id == ids[name]
    assert len(again.failed) == len(bad)
    assert again.exit_code == 1
    assert {name: lake.version(name) for name in lake.tables()} == versions  # no commit at all


def _snapshot(lake: Lake) -> dict[str, pl.DataFrame]:
    out = {}
    for name in lake.tables():
        frame = lake.read(name)
        if name == "runs":
            frame = frame.drop("ingested_at")  # when it was ingested: the one column that differs
        out[name] = frame.sort(frame.columns)
    return out


def test_two_ingests_of_one_folder_give_identical_lakes(tmp_path, mixed):
    root, _ids, _ = mixed
    one = Lake(tmp_path / "one")
    two = Lake(tmp_path / "two")
    r1 = ingest_paths([root], one, workers=1, progress=False)
    # a spawn pool this time, however small the batch
    r2 = ingest_paths([root], two, workers=2, progress=False, min_parallel_bytes=0)
    assert [(f.path, f.status, f.run_id, f.reason) for f in r1.files] == [
        (f.path, f.status, f.run_id, f.reason) for f in r2.files
    ]
    a, b = _snapshot(one), _snapshot(two)
    assert sorted(a) == sorted(b)
    for name in a:
        assert_frame_equal(a[name], b[name])


def test_same_content_twice_in_one_batch(tmp_path, contents):
    root = tmp_path / "drop"
    root.mkdir()
    (root / "x.stdf").write_bytes(contents["A"])
    (root / "y.stdf.gz").write_bytes(gzip.compress(contents["A"]))
    report = ingest_paths([root, root / "x.stdf"], tmp_path / "lake", workers=1, progress=False)
    assert [f.status for f in report.files] == [STATUS_ADDED, STATUS_ALREADY]
    assert "same content as" in report.files[1].reason
    assert report.exit_code == 0


def test_damaged_stdf_fails_whole_and_salvage_keeps_what_it_can(tmp_path):
    root = tmp_path / "drop"
    root.mkdir()
    good = stdf_bytes("S", n_parts=8)
    (root / "cut.stdf").write_bytes(good[: len(good) // 2])
    lake = Lake(tmp_path / "lake")
    report = ingest_paths([root], lake, workers=1, progress=False)
    assert report.exit_code == 1
    (failure,) = report.failed
    assert "cut.stdf" in failure.reason and "byte offset" in failure.reason
    assert lake.tables() == [] or lake.read("runs").height == 0
    assert lake.orphans() == {}
    salvaged = ingest_paths([root], lake, workers=1, salvage=True, progress=False)
    assert salvaged.exit_code == 0
    runs = lake.read("runs")
    assert runs["status"].to_list() == ["salvaged"]
    assert runs["status_reason"].item()
    assert 0 < lake.read("die").height < 8


def test_truncated_gzip_salvage_notes_the_compression_damage(tmp_path):
    data = stdf_bytes("G", n_parts=40, n_tests=20)
    packed = gzip.compress(data)
    path = tmp_path / "g.stdf.gz"
    path.write_bytes(packed[: len(packed) * 3 // 4])
    lake = Lake(tmp_path / "lake")
    assert ingest_paths([path], lake, workers=1, progress=False).exit_code == 1
    report = ingest_paths([path], lake, workers=1, salvage=True, progress=False)
    assert report.exit_code == 0, report.files[0].reason
    reason = lake.read("runs")["status_reason"].item()
    assert "gzip data is truncated" in reason


def test_expansion_limit_is_a_per_file_failure(tmp_path):
    path = tmp_path / "big.stdf.gz"
    path.write_bytes(gzip.compress(stdf_bytes("BIG", n_parts=50, n_tests=50)))
    report = ingest_paths(
        [path], tmp_path / "lake", workers=1, max_expanded_bytes=4096, progress=False
    )
    (f,) = report.failed
    assert "--max-expanded-mb" in f.reason


def test_missing_path_is_a_failure_and_empty_folder_is_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    report = ingest_paths(
        [tmp_path / "nope.stdf", tmp_path / "empty"], tmp_path / "lake", progress=False
    )
    assert [f.reason for f in report.files] == ["no such file or folder"]
    assert ingest_command([tmp_path / "empty"], tmp_path / "lake", quiet=False) == 0
    assert "nothing to ingest" in capsys.readouterr().out


def test_the_lake_folder_itself_is_not_ingested(tmp_path, contents):
    (tmp_path / "a.stdf").write_bytes(contents["A"])
    lake = tmp_path / "lake"
    assert ingest_command([tmp_path], lake, workers=1, quiet=True) == 0
    assert (
        ingest_command([tmp_path], lake, workers=1, quiet=True) == 0
    )  # lake files not "unrecognised"


def test_cli_runs_ingest_and_prints_a_summary_table(tmp_path, mixed, capsys):
    root, _ids, bad = mixed
    lake = tmp_path / "lake"
    code = main(["ingest", str(root), "--lake", str(lake), "--workers", "1"])
    assert code == 1
    captured = capsys.readouterr()
    out = captured.out
    for col in ("file", "records", "parts", "wafers", "time s", "status"):
        assert col in out
    assert "4 added" in out and f"{len(bad)} failed" in out
    assert "FAILED" in captured.err
    code = main(["ingest", str(root / "d.zip"), "--lake", str(lake), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out == "" and captured.err == ""


def test_cli_exit_2_when_the_lake_is_unusable(tmp_path, contents, capsys):
    (tmp_path / "a.stdf").write_bytes(contents["A"])
    not_a_lake = tmp_path / "stuff"
    not_a_lake.mkdir()
    (not_a_lake / "notes.txt").write_text("mine")
    assert main(["ingest", str(tmp_path / "a.stdf"), "--lake", str(not_a_lake), "-q"]) == 2
    assert "not a backend-fab lake" in capsys.readouterr().err
    other = tmp_path / "old-lake"
    other.mkdir()
    (other / "lake.json").write_text(
        json.dumps({"format": "backend-fab-lake", "schema_version": -1})
    )
    assert main(["ingest", str(tmp_path / "a.stdf"), "--lake", str(other), "-q"]) == 2
    assert (
        main(["ingest", str(tmp_path / "a.stdf"), "--lake", str(tmp_path / "l"), "--workers", "0"])
        == 2
    )


def test_cli_salvage_flag(tmp_path, capsys):
    good = stdf_bytes("SV", n_parts=8)
    (tmp_path / "cut.stdf").write_bytes(good[: len(good) // 2])
    lake = tmp_path / "lake"
    assert main(["ingest", str(tmp_path / "cut.stdf"), "--lake", str(lake), "-q"]) == 1
    assert main(["ingest", str(tmp_path / "cut.stdf"), "--lake", str(lake), "-q", "--salvage"]) == 0
    assert Lake(lake).read("runs")["status"].to_list() == ["salvaged"]


# --- the registry ---------------------------------------------------------------------------------

TOY_MAGIC = b"TOYBINS\n"


def detect_toy(path: Path, head: bytes) -> bool:
    return head.startswith(TOY_MAGIC)


def load_toy(path: Path, content: bytes) -> dict[str, pl.DataFrame]:
    """``TOYBINS`` then lines ``kind,bin,count``: a bins table, no runs row."""
    rows = [line.split(",") for line in content[len(TOY_MAGIC) :].decode().split()]
    if any(len(r) != 3 for r in rows):
        raise ingest.IngestError("toy: every line is kind,bin,count", path=str(path))
    frame = pl.DataFrame(
        {
            "kind": [r[0] for r in rows],
            "bin": [int(r[1]) for r in rows],
            "head": 255,
            "site": 255,
            "count": [int(r[2]) for r in rows],
            "run_id": None,
        },
    )
    return {"bins": schema.conform("bins", frame.with_columns(pl.lit("x").alias("run_id")))}


def load_toy_path_only(path: Path) -> dict[str, pl.DataFrame]:
    return load_toy(path, Path(path).read_bytes())


def load_toy_crash(path: Path, content: bytes) -> dict[str, pl.DataFrame]:
    raise ZeroDivisionError("toy loader bug")


def load_toy_dies_in_worker(path: Path, content: bytes) -> dict[str, pl.DataFrame]:
    import multiprocessing

    if multiprocessing.parent_process() is not None:
        os._exit(3)  # a worker killed (as by the OOM killer)
    return load_toy(path, content)


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(ingest, "INGESTERS", list(ingest.INGESTERS))
    return ingest.INGESTERS


def test_registered_format_is_detected_by_content_and_stamped_with_the_hash(tmp_path, registry):
    entry = ingest.register_ingester(detect_toy, load_toy, "toy bins")
    assert ingest.register_ingester(detect_toy, load_toy, "toy bins") == entry
    assert registry.count(entry) == 1
    data = TOY_MAGIC + b"H,1,10\nS,7,3\n"
    (tmp_path / "bins.whatever").write_bytes(data)
    (tmp_path / "bins2.gz").write_bytes(gzip.compress(TOY_MAGIC + b"H,2,5\n"))
    lake = Lake(tmp_path / "lake")
    report = ingest_paths([tmp_path], lake, workers=1, progress=False)
    assert [f.status for f in report.files] == [STATUS_ADDED, STATUS_ADDED]
    assert [f.format for f in report.files] == ["toy bins", "toy bins"]
    runs = lake.read("runs")
    assert set(runs["run_id"]) == {
        hashlib.sha256(data).hexdigest(),
        hashlib.sha256(TOY_MAGIC + b"H,2,5\n").hexdigest(),
    }
    bins = lake.read("bins").sort("run_id", "kind")
    assert set(bins["run_id"]) == set(runs["run_id"])
    assert bins.height == 3


def test_loaders_taking_only_the_path_and_string_references_work(tmp_path, registry):
    registry.clear()
    registry.append(("test_ingest:detect_toy", "test_ingest:load_toy_path_only"))
    (tmp_path / "t").write_bytes(TOY_MAGIC + b"H,1,1\n")
    report = ingest_paths([tmp_path / "t"], tmp_path / "lake", workers=1, progress=False)
    assert report.files[0].status == STATUS_ADDED
    assert report.files[0].format == "test_ingest:load_toy_path_only"
    assert Ingester(detect_toy, load_toy).label == "test_ingest:load_toy"


def test_a_loader_bug_fails_that_file_only(tmp_path, registry, contents):
    ingest.register_ingester(detect_toy, load_toy_crash, "crashing toy")
    (tmp_path / "t").write_bytes(TOY_MAGIC + b"H,1,1\n")
    (tmp_path / "a.stdf").write_bytes(contents["A"])
    report = ingest_paths([tmp_path], tmp_path / "lake", workers=1, progress=False)
    statuses = {Path(f.path).name: (f.status, f.reason) for f in report.files}
    assert statuses["a.stdf"][0] == STATUS_ADDED
    assert statuses["t"][0] == STATUS_FAILED
    assert "ZeroDivisionError" in statuses["t"][1] and "toy loader bug" in statuses["t"][1]


def test_a_worker_that_dies_fails_its_file_and_the_rest_carry_on(tmp_path, registry, contents):
    ingest.register_ingester(detect_toy, load_toy_dies_in_worker, "dying toy")
    (tmp_path / "t").write_bytes(TOY_MAGIC + b"H,1,1\n")
    for lot in "AB":
        (tmp_path / f"{lot}.stdf").write_bytes(contents[lot])
    report = ingest_paths(
        [tmp_path], tmp_path / "lake", workers=2, progress=False, min_parallel_bytes=0
    )
    statuses = {Path(f.path).name: (f.status, f.reason) for f in report.files}
    assert statuses["A.stdf"][0] == STATUS_ADDED
    assert statuses["B.stdf"][0] == STATUS_ADDED
    assert statuses["t"][0] == STATUS_FAILED
    assert "died" in statuses["t"][1]


def test_write_records_file_is_ingestable(tmp_path):
    """A minimal hand-made stream (FAR, MIR, MRR) is a run with no parts."""
    write_records([("MIR", {"SETUP_T": 0, "START_T": 0, "STAT_NUM": 1, "LOT_ID": "L"}),
                   ("MRR", {"FINISH_T": 0})], tmp_path / "m.stdf", ">")  # fmt: skip
    report = ingest_paths([tmp_path / "m.stdf"], tmp_path / "lake", workers=1, progress=False)
    assert report.files[0].status == STATUS_ADDED
    assert report.files[0].parts == 0


def test_shutil_copy_is_the_same_run(tmp_path, contents):
    (tmp_path / "a.stdf").write_bytes(contents["A"])
    lake = Lake(tmp_path / "lake")
    ingest_paths([tmp_path / "a.stdf"], lake, workers=1, progress=False)
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(tmp_path / "a.stdf", other / "renamed.dat")
    report = ingest_paths([other], lake, workers=1, progress=False)
    assert report.files[0].status == STATUS_ALREADY
