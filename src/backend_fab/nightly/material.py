"""Report material of a night in progress: one JSON file and its PNG figures per scored lot.

Written into ``<report>/.nights/<night_id>/`` before the lot's rows are committed to the lake,
so that a night interrupted after some lots were written can still put those lots, with their
figures, into its report when it is finished by the next run. The folder is removed once the
night's report is written. Files are replaced atomically (write, then rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from backend_fab.report import LotReport


def night_dir(report_dir: Path, night_id: str) -> Path:
    path = Path(report_dir) / ".nights" / night_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def drop_stale(report_dir: Path, keep: str) -> None:
    """Remove the material of nights other than ``keep`` (left by a run killed after it closed
    its night but before it cleaned up; under the lock no other night is in progress)."""
    root = Path(report_dir) / ".nights"
    if not root.is_dir():
        return
    for path in root.iterdir():
        if path.name != keep:
            shutil.rmtree(path, ignore_errors=True)


def _stem(lot_id: str) -> str:
    # lot ids may hold characters a filename cannot; a readable prefix plus a hash stays unique
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in lot_id)[:60]
    return f"{safe}-{hashlib.sha1(lot_id.encode()).hexdigest()[:10]}"


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_lot_report(folder: Path, report: LotReport) -> None:
    """Write the lot's figures, then its JSON (the JSON names the figures, so it goes last)."""
    stem = _stem(report.lot_id)
    for name, png in report.figures.items():
        _write(folder / f"{stem}.{name}.png", png)
    _write(folder / f"{stem}.json", json.dumps(report.to_json(), default=str).encode())


def load_lot_report(folder: Path | None, lot_id: str) -> LotReport | None:
    """The saved material of ``lot_id``, or None when absent or incomplete."""
    if folder is None:
        return None
    stem = _stem(lot_id)
    try:
        data = json.loads((folder / f"{stem}.json").read_text())
        figures = {
            name: (folder / f"{stem}.{name}.png").read_bytes() for name in data.get("figures", [])
        }
    except (OSError, ValueError):
        return None
    if data.get("lot_id") != lot_id:
        return None
    return LotReport.from_json(data, figures)
