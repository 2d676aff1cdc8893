"""Benchmark of the STDF reader against stdf-convert (Rust) and pystdf (pure Python).

Run: ``.venv/bin/python benchmarks/bench_stdf.py [--smoke] [--only-50mb] [--big-mb N] [--out DIR]``

Measures, in one run on one machine:

- warm: MB/s and PTR/s of ``read_stdf`` into the canonical tables, of ``stdf_convert.tables``
  and of pystdf (parser + a sink that keeps every record) on a synthetic multi-site file
  (>= 50 MB, ~500k PTR; a few MB with ``--smoke``) and on each shared sample; pystdf on a slice
  of the big file (it runs at a few MB/s);
- cold: the same in a fresh subprocess (interpreter start, imports and numba cache load
  included);
- peak RSS of each (fresh subprocess, ``VmHWM``);
- CPU seconds (user + system, every thread) beside wall seconds for warm and cold runs: on a
  shared, loaded machine wall time mostly measures the other jobs;
- ``iter_stdf`` over a >= 1 GB file (a few MB with ``--smoke``): MB/s and peak RSS.

Ratios are printed against the anchors measured in the same run. The synthetic files are written
by a small struct-based generator (:func:`write_synthetic_stdf`) to ``--out`` (default: a folder
in the system temp directory) and reused when present.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backend_fab.machine import describe

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "stdf"


# --------------------------------------------------------------------------------------------
# synthetic STDF generator (little-endian, multi-site wafer sort)
# --------------------------------------------------------------------------------------------


def _rec(typ: int, sub: int, payload: bytes) -> bytes:
    return struct.pack("<HBB", len(payload), typ, sub) + payload


def _cn(text: str) -> bytes:
    raw = text.encode("latin-1")
    return bytes([len(raw)]) + raw


def write_synthetic_stdf(
    path: Path, target_bytes: int, *, sites: int = 4, tests: int = 100, seed: int = 7
) -> dict:
    """Write a multi-site wafer-sort STDF file of about ``target_bytes``; return its counts.

    Every PTR carries its test name, limits, units and formats (as many testers write them),
    so a PTR takes ~90 bytes and 50 MB hold ~500k PTR. Sites interleave: PIR for every site,
    then each test on every site, then the PRRs. Every 600 parts a wafer ends (WRR) and the
    next starts (WIR). Summary records (TSR, HBR, SBR, PCR) close the file.
    """
    rng = random.Random(seed)
    names = [f"T{t:04d}_IDD_LEAK_PIN_{t % 97:02d} <> continuity_vdd_core" for t in range(tests)]
    lo = [rng.uniform(-1.0, 0.0) for _ in range(tests)]
    hi = [rng.uniform(1.0, 2.0) for _ in range(tests)]
    ptr_tail = [
        _cn(names[t]) + _cn("") + struct.pack("<BbbbffB", 0x0E, -3, -3, -3, lo[t], hi[t], 1)
        + b"A" + _cn("%9.3f") + _cn("%9.3f") + _cn("%9.3f")
        for t in range(tests)
    ]  # fmt: skip
    ptr_head = struct.Struct("<IBBBBf")
    n_ptr = n_parts = 0
    wafer = 0
    parts_on_wafer = 0
    counts = {"PTR": 0, "PIR": 0, "PRR": 0, "WIR": 0, "WRR": 0}
    hbins: dict[int, int] = {}
    with open(path, "wb") as fh:
        fh.write(_rec(0, 10, bytes([2, 4])))
        mir = struct.pack(
            "<IIBcccHc", 1_700_000_000, 1_700_000_100, 1, b"P", b" ", b" ", 65535, b" "
        )
        mir += b"".join(_cn(x) for x in ("LOT42", "PRODX", "node1", "J750", "PROG", "A",
                                          "SUB1", "op", "IG-XL", "9.0", "WS1", "25"))  # fmt: skip
        fh.write(_rec(1, 10, mir))
        fh.write(_rec(1, 80, bytes([1, 0, sites, *range(sites)])))

        def wir(i):
            fh.write(_rec(2, 10, struct.pack("<BBI", 1, 255, 1_700_000_200 + i) + _cn(f"W{i:02d}")))
            counts["WIR"] += 1

        def wrr(i, n):
            fh.write(_rec(2, 20, struct.pack("<BBIIIIII", 1, 255, 1_700_000_900 + i, n,
                                              0, 0, 0xFFFFFFFF, 0xFFFFFFFF) + _cn(f"W{i:02d}")))  # fmt: skip
            counts["WRR"] += 1

        wir(wafer)
        xy = 0
        while fh.tell() < target_bytes:
            block = []
            for s in range(sites):
                block.append(_rec(5, 10, bytes([1, s])))
            fails = [False] * sites
            for t in range(tests):
                for s in range(sites):
                    v = rng.gauss(0.5, 0.4)
                    fail = not (lo[t] <= v <= hi[t])
                    fails[s] |= fail
                    body = ptr_head.pack(t + 1000, 1, s, 0x80 if fail else 0, 0, v) + ptr_tail[t]
                    block.append(_rec(15, 10, body))
            for s in range(sites):
                hb = 2 if fails[s] else 1
                hbins[hb] = hbins.get(hb, 0) + 1
                x, y = xy % 40 - 20, xy // 40 % 40 - 20
                xy += 1
                block.append(_rec(5, 20, struct.pack("<BBBHHHhhI", 1, s, 0x08 if fails[s] else 0,
                                                     tests, hb, hb, x, y, 120)
                                  + _cn(str(n_parts + s)) + _cn("") + _cn("")))  # fmt: skip
            fh.write(b"".join(block))
            n_parts += sites
            n_ptr += sites * tests
            parts_on_wafer += sites
            if parts_on_wafer >= 600:
                wrr(wafer, parts_on_wafer)
                wafer += 1
                parts_on_wafer = 0
                xy = 0
                wir(wafer)
        wrr(wafer, parts_on_wafer)
        for t in range(tests):
            fh.write(_rec(10, 30, struct.pack("<BBcIIII", 255, 0, b"P", t + 1000, n_parts,
                                              0xFFFFFFFF, 0xFFFFFFFF) + _cn(names[t])))  # fmt: skip
        for hb, c in sorted(hbins.items()):
            pf = b"P" if hb == 1 else b"F"
            fh.write(_rec(1, 40, struct.pack("<BBHIc", 255, 0, hb, c, pf) + _cn(f"BIN{hb}")))
            fh.write(_rec(1, 50, struct.pack("<BBHIc", 255, 0, hb, c, pf) + _cn(f"BIN{hb}")))
        fh.write(_rec(1, 30, struct.pack("<BBIIIII", 255, 0, n_parts, 0, 0, hbins.get(1, 0),
                                         0xFFFFFFFF)))  # fmt: skip
        fh.write(_rec(1, 20, struct.pack("<Ic", 1_700_001_000, b" ") + _cn("") + _cn("")))
    counts.update(PTR=n_ptr, PIR=n_parts, PRR=n_parts)
    return counts


# --------------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------------

PY = sys.executable
ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
tool, path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
n_ptr = 0
if tool == "read_stdf":
    from backend_fab.io.stdf import read_stdf
    n_ptr = read_stdf(path).results.height
elif tool == "iter_stdf":
    from backend_fab.io.stdf import iter_stdf
    for batch in iter_stdf(path, batch_rows=1_000_000):
        n_ptr += batch.results.height
elif tool == "stdf_convert":
    import stdf_convert
    n_ptr = stdf_convert.tables(path)["PTR"].num_rows
elif tool == "pystdf":
    import pystdf.IO
    class Sink:
        n = 0
        def after_send(self, source, data):
            if type(data[0]).__name__ == "Ptr":
                Sink.n += 1
    with open(path, "rb") as fh:
        p = pystdf.IO.Parser(inp=fh)
        p.addSink(Sink())
        p.parse()
    n_ptr = Sink.n
t1 = time.perf_counter()
# VmHWM: the peak RSS of this process image (ru_maxrss would include the parent's, kept by exec)
with open("/proc/self/status") as fh:
    hwm = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM"))
print(json.dumps({"seconds": t1 - t0, "n_ptr": n_ptr, "peak_rss_mb": hwm / 1024}))
"""


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def child(tool: str, path: Path, env: dict | None = None) -> dict:
    """Run one decode in a fresh interpreter: wall and CPU seconds of the whole process, peak RSS."""
    c0 = _children_cpu()
    t0 = time.perf_counter()
    out = subprocess.run(
        [PY, "-c", _CHILD, tool, str(path), "cold"], capture_output=True, text=True,
        env={**os.environ, **(env or {})}, cwd=ROOT, check=True,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_seconds"] = wall
    res["process_cpu_seconds"] = _children_cpu() - c0
    return res


def warm(fn, repeat: int) -> float:
    """Best wall seconds of ``repeat`` runs after one warm-up run (steady state, compiled kernels)."""
    return warm_cpu(fn, repeat)[0]


def warm_cpu(fn, repeat: int) -> tuple[float, float]:
    """Best wall and best CPU seconds (``time.process_time``: every thread of this process) of
    ``repeat`` runs after one warm-up run."""
    fn()
    best = best_cpu = float("inf")
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best, best_cpu


def _pystdf_parse(path: Path) -> int:
    import pystdf.IO

    class Sink:
        n = 0

        def after_send(self, source, data):
            if type(data[0]).__name__ == "Ptr":
                Sink.n += 1

    with open(path, "rb") as fh:
        p = pystdf.IO.Parser(inp=fh)
        p.addSink(Sink())
        p.parse()
    return Sink.n


def machine() -> str:
    return describe(("numpy", "polars", "numba", "pystdf", "stdf-convert"))


def _decompressed(path: Path, folder: Path) -> Path:
    """The shared samples are compressed; pystdf reads plain files (kept in ``folder``)."""
    import bz2
    import gzip

    if path.suffix not in (".gz", ".bz2"):
        return path
    out = folder / f"decoded_{path.stem}"
    if not out.exists():
        opener = gzip.open if path.suffix == ".gz" else bz2.open
        with opener(path, "rb") as fh:
            out.write_bytes(fh.read())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny inputs, no timing goals")
    ap.add_argument("--only-50mb", action="store_true",
                    help="only the synthetic file (warm and cold), with more repeats")  # fmt: skip
    ap.add_argument("--big-mb", type=float, default=None, help="size of the synthetic file (MB)")
    ap.add_argument("--stream-mb", type=float, default=None, help="size of the iter_stdf file")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bench_stdf")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    smoke = args.smoke
    big_mb = args.big_mb or (2.0 if smoke else 50.0)
    stream_mb = args.stream_mb or (3.0 if smoke else 1100.0)
    slice_mb = 0.3 if smoke else 2.0
    repeat = 1 if smoke else (5 if args.only_50mb else 3)
    args.out.mkdir(parents=True, exist_ok=True)

    import stdf_convert

    from backend_fab.io.stdf import read_stdf

    files = {}
    sizes = (("synthetic", big_mb), ("pystdf-slice", slice_mb), ("stream", stream_mb))
    for label, mb in sizes[:1] if args.only_50mb else sizes:
        path = args.out / f"synthetic_{mb:g}MB.stdf"
        if not path.exists():
            t0 = time.perf_counter()
            partial = path.with_suffix(".partial")  # an interrupted run leaves no half file
            write_synthetic_stdf(partial, int(mb * 1e6))
            partial.rename(path)
            print(f"wrote {path} in {time.perf_counter() - t0:.1f} s")
        files[label] = path
    report: dict = {"machine": machine(), "smoke": smoke, "files": {}}
    print(f"machine: {report['machine']}")

    def measure(label: str, path: Path, with_pystdf: bool, cold: bool = True) -> None:
        # MB/s on the decoded (decompressed) bytes; the file size is kept too
        size_mb = _decompressed(path, args.out).stat().st_size / 1e6
        data = read_stdf(path)
        n_ptr = data.record_counts.get("PTR", 0)
        row: dict = {"size_mb": size_mb, "file_mb": path.stat().st_size / 1e6, "n_ptr": n_ptr,
                     "n_parts": data.die.height}  # fmt: skip
        # interleaved, so that both see the same load from other jobs
        ours_w, theirs_w = [], []
        for _ in range(2 if args.only_50mb else 1):
            ours_w.append(warm_cpu(lambda: read_stdf(path), repeat))
            theirs_w.append(warm_cpu(lambda: stdf_convert.tables(str(path)), repeat))
        row["read_stdf_warm_s"] = min(w for w, _ in ours_w)
        row["read_stdf_warm_cpu_s"] = min(c for _, c in ours_w)
        row["stdf_convert_warm_s"] = min(w for w, _ in theirs_w)
        row["stdf_convert_warm_cpu_s"] = min(c for _, c in theirs_w)
        if with_pystdf:
            plain = _decompressed(path, args.out)
            t0 = time.perf_counter()
            _pystdf_parse(plain)
            row["pystdf_s"] = time.perf_counter() - t0
        if not cold:
            report["files"][label] = row
            print(f"\n[{label}] warm read_stdf {row['read_stdf_warm_s']:.3f} s, stdf-convert "
                  f"{row['stdf_convert_warm_s']:.3f} s")  # fmt: skip
            return
        colds = []
        for _ in range(3 if args.only_50mb else 1):  # interleaved; best of each
            colds.append((child("read_stdf", path), child("stdf_convert", path)))
        ours = min((o for o, _ in colds), key=lambda r: r["process_seconds"])
        theirs = min((t for _, t in colds), key=lambda r: r["process_seconds"])
        row["read_stdf_cold_s"] = ours["process_seconds"]
        row["read_stdf_cold_cpu_s"] = min(o["process_cpu_seconds"] for o, _ in colds)
        row["read_stdf_peak_rss_mb"] = ours["peak_rss_mb"]
        row["stdf_convert_cold_s"] = theirs["process_seconds"]
        row["stdf_convert_cold_cpu_s"] = min(t["process_cpu_seconds"] for _, t in colds)
        row["stdf_convert_peak_rss_mb"] = theirs["peak_rss_mb"]
        report["files"][label] = row
        w_ours, w_sc = row["read_stdf_warm_s"], row["stdf_convert_warm_s"]
        print(f"\n[{label}] {path.name}: {size_mb:.1f} MB, {n_ptr:,} PTR, {row['n_parts']:,} parts")
        print(f"  warm  read_stdf     {w_ours:8.3f} s  {size_mb / w_ours:8.1f} MB/s  "
              f"{n_ptr / w_ours / 1e6:6.2f} M PTR/s")  # fmt: skip
        print(f"  warm  stdf-convert  {w_sc:8.3f} s  {size_mb / w_sc:8.1f} MB/s  "
              f"{n_ptr / w_sc / 1e6:6.2f} M PTR/s   ratio read_stdf/stdf-convert "
              f"{w_sc / w_ours:5.2f}x")  # fmt: skip
        if with_pystdf:
            print(f"  pystdf              {row['pystdf_s']:8.3f} s  "
                  f"{size_mb / row['pystdf_s']:8.2f} MB/s   ratio read_stdf/pystdf "
                  f"{row['pystdf_s'] / w_ours:6.1f}x")  # fmt: skip
        print(f"  cold  read_stdf     {ours['process_seconds']:8.3f} s (process; decode "
              f"{ours['seconds']:.3f} s incl. imports)  peak RSS {ours['peak_rss_mb']:.0f} MB")  # fmt: skip
        print(f"  cold  stdf-convert  {theirs['process_seconds']:8.3f} s (process)  "
              f"peak RSS {theirs['peak_rss_mb']:.0f} MB   cold ratio "
              f"{theirs['process_seconds'] / ours['process_seconds']:5.2f}x")  # fmt: skip
        oc, tc = row["read_stdf_warm_cpu_s"], row["stdf_convert_warm_cpu_s"]
        ocold, tcold = row["read_stdf_cold_cpu_s"], row["stdf_convert_cold_cpu_s"]
        print(f"  CPU   warm read_stdf {oc:.3f} s, stdf-convert {tc:.3f} s: ratio {tc / oc:5.2f}x;"
              f" cold {ocold:.3f} s vs {tcold:.3f} s: ratio {tcold / ocold:5.2f}x")  # fmt: skip

    measure("synthetic", files["synthetic"], with_pystdf=False)
    if args.only_50mb:
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
        return 0
    # pystdf runs at a few MB/s: measured on a smaller file of the same structure
    slice_path = files["pystdf-slice"]
    size = slice_path.stat().st_size / 1e6
    ours = warm(lambda: read_stdf(slice_path), repeat)
    t0 = time.perf_counter()
    n = _pystdf_parse(slice_path)
    py_s = time.perf_counter() - t0
    report["pystdf_slice"] = {
        "size_mb": size,
        "n_ptr": n,
        "pystdf_s": py_s,
        "read_stdf_warm_s": ours,
    }
    big = report["files"]["synthetic"]
    big_rate = big["size_mb"] / big["read_stdf_warm_s"]
    print(f"\n[pystdf slice] {size:.1f} MB, {n:,} PTR: pystdf {py_s:.2f} s = {size / py_s:.2f} MB/s; "
          f"read_stdf {ours:.3f} s = {size / ours:.1f} MB/s (ratio {py_s / ours:.0f}x); "
          f"read_stdf on the big file {big_rate:.1f} MB/s = {big_rate / (size / py_s):.0f}x "
          f"pystdf's MB/s")  # fmt: skip
    if not smoke:
        # compile time apart from steady state: a cold process without the numba cache
        nocache = child("read_stdf", slice_path, env={"BACKEND_FAB_NUMBA_CACHE": "0"})
        cached = child("read_stdf", slice_path)
        report["compile"] = {"no_cache_process_s": nocache["process_seconds"],
                             "cached_process_s": cached["process_seconds"]}  # fmt: skip
        print(f"\n[compile] cold process without numba cache {nocache['process_seconds']:.2f} s, "
              f"with the cache {cached['process_seconds']:.2f} s (difference = compile time)")  # fmt: skip
    samples = sorted(SHARED.glob("*.stdf*")) if SHARED.exists() else []
    if smoke:
        samples = [p for p in samples if p.stat().st_size < 10_000]
    for path in samples:
        measure(
            path.name, path, with_pystdf=not smoke and "libstdf" not in path.name, cold=not smoke
        )
    # streaming a file larger than memory budgets: iter_stdf, peak RSS of the process
    stream = files["stream"]
    res = child("iter_stdf", stream)
    size = stream.stat().st_size / 1e6
    report["iter_stdf"] = {"size_mb": size, **res}
    print(f"\n[iter_stdf] {stream.name}: {size:,.0f} MB, {res['n_ptr']:,} result rows in "
          f"{res['process_seconds']:.1f} s = {size / res['process_seconds']:.1f} MB/s, "
          f"peak RSS {res['peak_rss_mb']:.0f} MB")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
