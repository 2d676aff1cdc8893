"""The nightly HTML report: self-contained, alarms first, every figure decodes in a real browser."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from backend_fab.report import (
    LotReport,
    NightReport,
    data_uri,
    png_bytes,
    render_html,
    write_report,
)

HEADER_RGB = (0x1D, 0x24, 0x30)


def _wafer_png(fail_at: tuple[int, int] | None = None) -> bytes:
    from matplotlib.figure import Figure

    grid = np.zeros((9, 9))
    yy, xx = np.mgrid[-4:5, -4:5]
    grid[xx**2 + yy**2 > 18] = np.nan
    if fail_at:
        grid[fail_at] = 1.0
    fig = Figure(figsize=(2, 2))
    ax = fig.add_subplot()
    ax.imshow(grid, cmap="RdYlGn_r", vmin=0, vmax=1)
    ax.set_axis_off()
    return png_bytes(fig, dpi=50)


def _night(tmp_name: str = "20240501T020000Z") -> NightReport:
    png = _wafer_png((4, 4))
    lots = [
        LotReport(
            lot_id="LOT<A>&1",
            product="P1",
            run_ids=["r1", "r2"],
            n_wafers=2,
            n_tested=150,
            n_good=120,
            yield_first_pass=0.75,
            yield_final=0.80,
            yield_after_pat=0.78,
            syl_level=1,
            sbl_level=0,
            alarm_level=2,
            pat_loss={"DPAT": 0.01, "GDBN": 0.0067},
            pareto=[
                {
                    "kind": "H",
                    "bin": 5,
                    "name": "OPEN",
                    "count": 20,
                    "fraction": 0.1333,
                    "cumulative": 0.6667,
                },
                {
                    "kind": "H",
                    "bin": 7,
                    "name": "LEAK",
                    "count": 10,
                    "fraction": 0.0667,
                    "cumulative": 1.0,
                },
            ],
            wafers=[
                {
                    "wafer_id": "1",
                    "n_tested": 75,
                    "yield_final": 0.8,
                    "yield_after_pat": 0.78,
                    "n_clusters": 1,
                    "largest_cluster": 6,
                    "join_count_z": 4.2,
                    "pattern_class": "Loc",
                    "alarm_level": 2,
                },
            ],
            figures={name: png for name in ("pareto", "gallery", "stacked", "pat_loss")},
        ),
        LotReport(
            lot_id="LOT-B",
            product="P1",
            run_ids=["r3"],
            n_wafers=1,
            n_tested=75,
            n_good=70,
            yield_first_pass=0.9,
            yield_final=0.9333,
            yield_after_pat=0.9333,
            syl_level=0,
            sbl_level=0,
            alarm_level=0,
            figures={"gallery": _wafer_png()},
        ),
    ]
    alarms = [
        {
            "product": "P1",
            "lot_id": "LOT<A>&1",
            "wafer_id": "1",
            "recipe_hash": "abc",
            "rule": "cluster",
            "key": "join-count",
            "level": 2,
            "evidence": "z = 4.2 > 3.09; largest cluster 6 die",
            "figure": base64.b64encode(png).decode(),
        },
        {
            "product": "P1",
            "lot_id": "LOT<A>&1",
            "wafer_id": "",
            "recipe_hash": "abc",
            "rule": "SYL",
            "key": "yield",
            "level": 1,
            "evidence": "yield 80% below SYL1 82%",
            "figure": None,
        },
    ]
    failures = [
        {
            "lot_id": "LOT-C",
            "error_type": "ValueError",
            "message": "bad <data>",
            "traceback": "Traceback...\nValueError: bad <data>",
        }
    ]
    return NightReport(
        night_id=tmp_name,
        started_at="2024-05-01T02:00:00+00:00",
        finished_at="2024-05-01T02:03:00+00:00",
        lake="/lake",
        recipe_hash="abc",
        engine="local",
        lots=lots,
        alarms=alarms,
        failures=failures,
        skipped=3,
        timings={"score": 1.5, "write": 0.2},
    )


def test_html_is_self_contained_escaped_and_alarms_come_first():
    page = render_html(_night())
    # nothing that a browser would fetch from elsewhere
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert not re.search(r"<script[^>]+src", page)
    # user data is escaped
    assert "LOT<A>" not in page and "LOT&lt;A&gt;&amp;1" in page and "bad &lt;data&gt;" in page
    # order: alarms, failures, summary, then lots
    positions = [page.index(f'id="{s}"') for s in ("alarms", "failures", "summary", "lots")]
    assert positions == sorted(positions)
    assert page.count('class="lot"') == 2
    assert page.count('<tr class="alarm') == 2
    assert page.count(data_uri(_wafer_png((4, 4)))[:200]) >= 1


def test_write_report_files_and_json_summary(tmp_path):
    paths = write_report(_night(), tmp_path)
    assert paths.html.name == "night-20240501T020000Z.html"
    assert (tmp_path / "latest.html").read_bytes() == paths.html.read_bytes()
    summary = json.loads(paths.json.read_text())
    assert summary["schema"] == "backend-fab/nightly-report/1"
    totals = summary["totals"]
    assert (
        totals["lots_scored"] == 2 and totals["lots_failed"] == 1 and totals["lots_unchanged"] == 3
    )
    assert totals["die_tested"] == 225 and totals["die_good"] == 190
    assert (
        totals["alarms_level2"] == 1
        and totals["alarms_level1"] == 1
        and totals["max_alarm_level"] == 2
    )
    assert summary["alarms"][0]["has_figure"] is True and "figure" not in summary["alarms"][0]
    assert "traceback" not in summary["failures"][0]
    assert summary["lots"][0]["figures"] == ["gallery", "pareto", "pat_loss", "stacked"]
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["latest.html", "latest.json", paths.html.name, paths.json.name]
    )


def chromium_or_skip() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        "no headless chromium on PATH (Debian: apt-get install chromium); the report's browser "
        "check needs one"
    )


def browser_args(profile: Path) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        # any network access would fail: the report must not need it
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
    ]


def load_in_browser(html: Path, tmp_path: Path) -> tuple[str, Path]:
    """The DOM chromium builds for ``html`` after its load event, and a screenshot of it."""
    exe = chromium_or_skip()
    url = html.resolve().as_uri()
    dom = subprocess.run(
        [exe, *browser_args(tmp_path / "profile-dom"), "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            exe,
            *browser_args(tmp_path / "profile-shot"),
            "--window-size=1200,900",
            f"--screenshot={shot}",
            url,
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    return dom, shot


def check_report_dom(dom: str, *, lots: int, alarms: int) -> None:
    """The key elements of a report DOM, and that the browser decoded every figure."""
    body = re.search(r"<body([^>]*)>", dom).group(1)
    n_fig = int(re.search(r'data-figures="(\d+)"', body).group(1))
    n_ok = int(re.search(r'data-figures-decoded="(\d+)"', body).group(1))
    assert n_fig > 0 and n_ok == n_fig, f"{n_ok} of {n_fig} figures decoded"
    assert 'id="alarms"' in dom and 'id="summary"' in dom
    assert dom.index('id="alarms"') < dom.index('id="summary"') < dom.index('id="lots"')
    assert dom.count('class="lot"') == lots
    assert len(re.findall(r'<tr class="alarm ', dom)) == alarms


@pytest.mark.browser
def test_report_renders_in_headless_chromium(tmp_path):
    from matplotlib.image import imread

    paths = write_report(_night(), tmp_path / "report")
    dom, shot = load_in_browser(paths.html, tmp_path)
    check_report_dom(dom, lots=2, alarms=2)
    assert "Lots that could not be scored" in dom
    # pixels: the dark page header is at the top of the screenshot, the page below it is light
    img = imread(shot)[..., :3]
    top = tuple(int(c * 255 + 0.5) for c in img[10, 600])
    assert all(abs(a - b) <= 6 for a, b in zip(top, HEADER_RGB, strict=True)), top
    assert img[300:, :, :].mean() > 0.8
