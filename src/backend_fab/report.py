"""The nightly HTML report: one self-contained file per night, plus a JSON summary for tools.

The HTML has no network dependency at all: CSS is inline, figures are PNG ``data:`` URIs, and the
only script is an inline one that counts the figures the browser decoded (``data-figures-decoded``
on ``<body>``), which the browser test reads. Alarms come first, then failed lots, then one section
per lot: yield, SYL/SBL level, bin Pareto, wafer gallery, stacked map and PAT yield loss per rule.

The JSON summary carries the same numbers without figures (``schema``: ``backend-fab/nightly-
report/1``), so dashboards and ticketing tools need not parse HTML.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPORT_SCHEMA = "backend-fab/nightly-report/1"

#: Figure names a lot section shows, in order, with their captions.
LOT_FIGURES = {
    "pareto": "Bin Pareto (final bins, share of tested die, cumulative %)",
    "gallery": "Wafer gallery (final hard bins)",
    "stacked": "Stacked map: fail rate per die position over the lot's wafers",
    "pat_loss": "PAT yield loss per rule",
}

LEVEL_NAMES = {0: "none", 1: "review", 2: "hold"}


@dataclass
class LotReport:
    """What the report shows for one lot (built by the batch from its scores and data)."""

    lot_id: str
    product: str | None
    run_ids: list[str]
    n_wafers: int
    n_tested: int
    n_good: int
    yield_first_pass: float | None
    yield_final: float | None
    yield_after_pat: float | None
    syl_level: int | None
    sbl_level: int | None
    alarm_level: int
    pat_loss: dict[str, float] = field(default_factory=dict)
    pareto: list[dict[str, Any]] = field(default_factory=list)
    wafers: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: figure name -> PNG bytes (not serialised into the JSON summary)
    figures: dict[str, bytes] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("figures")
        data["figures"] = sorted(self.figures)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], figures: dict[str, bytes] | None = None) -> LotReport:
        data = dict(data)
        data.pop("figures", None)
        return cls(**data, figures=dict(figures or {}))


@dataclass
class NightReport:
    """One night of the batch."""

    night_id: str
    started_at: str
    finished_at: str
    lake: str
    recipe_hash: str
    engine: str
    lots: list[LotReport]
    alarms: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    skipped: int = 0
    resumed_from: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_tested(self) -> int:
        return sum(lot.n_tested for lot in self.lots)

    @property
    def n_good(self) -> int:
        return sum(lot.n_good for lot in self.lots)

    def alarm_counts(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for alarm in self.alarms:
            out[int(alarm["level"])] = out.get(int(alarm["level"]), 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        """The JSON summary (no figures; alarm figures replaced by a flag)."""
        counts = self.alarm_counts()
        return {
            "schema": REPORT_SCHEMA,
            "night_id": self.night_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "lake": self.lake,
            "recipe_hash": self.recipe_hash,
            "engine": self.engine,
            "resumed_from": self.resumed_from,
            "totals": {
                "lots_scored": len(self.lots),
                "lots_failed": len(self.failures),
                "lots_unchanged": self.skipped,
                "wafers": sum(lot.n_wafers for lot in self.lots),
                "die_tested": self.n_tested,
                "die_good": self.n_good,
                "yield_pooled": _ratio(self.n_good, self.n_tested),
                "alarms": len(self.alarms),
                "alarms_level2": counts.get(2, 0),
                "alarms_level1": counts.get(1, 0),
                "max_alarm_level": max(counts, default=0),
            },
            "timings_s": {
                k: round(v, 3) for k, v in self.timings.items() if not k.startswith("lots.")
            },
            "lot_stage_seconds": {
                k.split(".", 1)[1]: round(v, 3)
                for k, v in self.timings.items()
                if k.startswith("lots.")
            },
            "alarms": [
                {k: v for k, v in a.items() if k != "figure"}
                | {"has_figure": bool(a.get("figure"))}
                for a in self.alarms
            ],
            "failures": [{k: v for k, v in f.items() if k != "traceback"} for f in self.failures],
            "lots": [lot.to_json() for lot in self.lots],
        }


def _ratio(num: float, den: float) -> float | None:
    return None if not den else num / den


# --- figures -------------------------------------------------------------------------------------


def png_bytes(fig, *, dpi: int = 90) -> bytes:
    """Render a matplotlib Figure to PNG bytes (Agg canvas, no pyplot state, no timestamp)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if fig.canvas is None or not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def pat_loss_figure(loss: dict[str, float], *, title: str = "PAT yield loss per rule"):
    """Bar chart of PAT yield loss (share of tested die, in %) per rule, largest first."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    items = sorted(((k, v) for k, v in loss.items() if v > 0), key=lambda kv: -kv[1]) or [
        ("none", 0.0)
    ]
    fig = Figure(figsize=(5.0, 3.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    names = [k for k, _ in items]
    values = [100.0 * v for _, v in items]
    ax.barh(names[::-1], values[::-1], color="#c53030")
    for i, v in enumerate(values[::-1]):
        ax.text(v, i, f" {v:.2f} %", va="center", fontsize=8)
    ax.set_xlabel("die re-binned, % of tested")
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0, max([*values, 0.01]) * 1.3)
    fig.tight_layout()
    return fig


def data_uri(png: bytes) -> str:
    """A ``data:image/png;base64,...`` URI for ``png``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# --- HTML ----------------------------------------------------------------------------------------

_CSS = """
:root { --ink:#1d2430; --muted:#5b6575; --line:#d9dee7; --bg:#f6f7f9; --l1:#b7791f; --l2:#c53030;
        --ok:#2f855a; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       background: var(--bg); margin: 0; }
header { background: #1d2430; color: #fff; padding: 16px 24px; }
header h1 { margin: 0 0 4px; font-size: 20px; }
header .meta { color: #c9d1dc; font-size: 12px; }
main { padding: 16px 24px 48px; max-width: 1400px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 12px 16px;
          margin: 0 0 16px; }
h2 { font-size: 17px; margin: 4px 0 10px; }
h3 { font-size: 15px; margin: 14px 0 6px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; min-width: 130px; }
.card .v { font-size: 20px; font-weight: 600; }
.card .k { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #eef1f5; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.level { display: inline-block; border-radius: 10px; padding: 0 8px; color: #fff; font-weight: 600;
         font-size: 12px; }
.level-0 { background: var(--ok); } .level-1 { background: var(--l1); } .level-2 { background: var(--l2); }
.alarm img { max-width: 220px; max-height: 160px; }
.figs { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; }
figure img { max-width: 100%; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 12px; }
nav a { margin-right: 10px; }
.muted { color: var(--muted); }
pre { white-space: pre-wrap; font-size: 12px; background: #f1f3f6; padding: 8px; }
"""

# Counts figures the browser could decode: the browser test reads this attribute.
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img');
  var ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; }
  }
  document.body.setAttribute('data-figures', String(imgs.length));
  document.body.setAttribute('data-figures-decoded', String(ok));
});
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _pct(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100.0 * value:.{digits}f} %"


def _num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.2f}"
    return f"{value:,}" if isinstance(value, int) else _e(value)


def _level(level: Any) -> str:
    lv = int(level or 0)
    return f'<span class="level level-{lv}" title="{LEVEL_NAMES.get(lv, lv)}">L{lv}</span>'


def _anchor(lot_id: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in lot_id)
    return f"lot-{safe}"


def _figure(png: bytes | None, caption: str, css_class: str, alt: str) -> str:
    if not png:
        return ""
    return (
        f'<figure class="{css_class}"><img alt="{_e(alt)}" src="{data_uri(png)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _alarm_figure_src(figure: str | None) -> str | None:
    if not figure:
        return None
    if figure.startswith("data:image/"):
        return figure
    return "data:image/png;base64," + figure


def _alarms_html(night: NightReport) -> str:
    if not night.alarms:
        return (
            '<section id="alarms"><h2>Alarms</h2><p class="muted">No alarm tonight.</p></section>'
        )
    rows = []
    for a in night.alarms:
        src = _alarm_figure_src(a.get("figure"))
        img = f'<img alt="figure for {_e(a["rule"])}" src="{_e(src)}">' if src else ""
        wafer = a.get("wafer_id") or "(lot)"
        rows.append(
            f'<tr class="alarm level-row-{int(a["level"])}" data-level="{int(a["level"])}" '
            f'data-lot="{_e(a["lot_id"])}" data-rule="{_e(a["rule"])}">'
            f"<td>{_level(a['level'])}</td>"
            f'<td><a href="#{_anchor(a["lot_id"])}">{_e(a["lot_id"])}</a></td>'
            f"<td>{_e(wafer)}</td><td>{_e(a['rule'])}</td><td>{_e(a.get('key'))}</td>"
            f"<td>{_e(a.get('evidence'))}</td><td>{img}</td></tr>"
        )
    return (
        '<section id="alarms"><h2>Alarms</h2><table><thead><tr><th>Level</th><th>Lot</th>'
        "<th>Wafer</th><th>Rule</th><th>Key</th><th>Evidence</th><th>Figure</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


def _failures_html(night: NightReport) -> str:
    if not night.failures:
        return ""
    rows = []
    for f in night.failures:
        tb = f.get("traceback")
        details = (
            f"<details><summary>traceback</summary><pre>{_e(tb)}</pre></details>" if tb else ""
        )
        rows.append(
            f'<tr class="failure" data-lot="{_e(f["lot_id"])}"><td>{_e(f["lot_id"])}</td>'
            f"<td>{_e(f.get('error_type'))}</td><td>{_e(f.get('message'))}{details}</td></tr>"
        )
    return (
        '<section id="failures"><h2>Lots that could not be scored</h2>'
        '<p class="muted">These lots keep their previous scores and are retried next night.</p>'
        "<table><thead><tr><th>Lot</th><th>Error</th><th>Message</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


def _summary_html(night: NightReport) -> str:
    counts = night.alarm_counts()
    cards = [
        ("lots-scored", len(night.lots), "lots scored"),
        ("lots-failed", len(night.failures), "lots failed"),
        ("lots-unchanged", night.skipped, "lots unchanged"),
        ("wafers", sum(lot.n_wafers for lot in night.lots), "wafers"),
        ("die", f"{night.n_tested:,}", "die tested"),
        ("yield", _pct(_ratio(night.n_good, night.n_tested)), "pooled final yield"),
        ("alarms-l2", counts.get(2, 0), "hold alarms (L2)"),
        ("alarms-l1", counts.get(1, 0), "review alarms (L1)"),
    ]
    html_cards = "".join(
        f'<div class="card" id="card-{key}"><div class="v">{_e(v)}</div><div class="k">{_e(k)}</div></div>'
        for key, v, k in cards
    )
    lot_rows = "".join(
        f'<tr><td><a href="#{_anchor(lot.lot_id)}">{_e(lot.lot_id)}</a></td><td>{_e(lot.product)}</td>'
        f'<td class="num">{lot.n_wafers}</td><td class="num">{lot.n_tested:,}</td>'
        f'<td class="num">{_pct(lot.yield_final)}</td><td class="num">{_pct(lot.yield_after_pat)}</td>'
        f"<td>{_level(lot.alarm_level)}</td></tr>"
        for lot in night.lots
    )
    lot_table = (
        "<table><thead><tr><th>Lot</th><th>Product</th><th class='num'>Wafers</th>"
        "<th class='num'>Die tested</th><th class='num'>Final yield</th>"
        "<th class='num'>Yield after PAT</th><th>Alarm</th></tr></thead>"
        f"<tbody>{lot_rows}</tbody></table>"
        if night.lots
        else '<p class="muted">No new or changed lot tonight.</p>'
    )
    timings = ", ".join(
        f"{k} {v:.1f} s" for k, v in night.timings.items() if not k.startswith("lots.")
    )
    stages = ", ".join(
        f"{k.split('.', 1)[1]} {v:.1f} s" for k, v in night.timings.items() if k.startswith("lots.")
    )
    resumed = (
        f'<p class="muted">This run finished the night {_e(night.resumed_from)}, which was '
        "interrupted.</p>"
        if night.resumed_from
        else ""
    )
    return (
        f'<section id="summary"><h2>Summary</h2>{resumed}<div class="cards">{html_cards}</div>'
        f"<h3>Lots</h3>{lot_table}"
        + (f'<p class="muted">Time by stage: {_e(timings)}</p>' if timings else "")
        + (f'<p class="muted">Analysis time summed over lots: {_e(stages)}</p>' if stages else "")
        + "</section>"
    )


def _lot_html(lot: LotReport) -> str:
    head = (
        f'<section class="lot" id="{_anchor(lot.lot_id)}" data-lot="{_e(lot.lot_id)}">'
        f"<h2>Lot {_e(lot.lot_id)} {_level(lot.alarm_level)}</h2>"
        f'<p class="muted">Product {_e(lot.product)}; {lot.n_wafers} wafers; runs '
        f"{_e(', '.join(lot.run_ids))}</p>"
    )
    cards = [
        ("Die tested", f"{lot.n_tested:,}"),
        ("First-pass yield", _pct(lot.yield_first_pass)),
        ("Final yield", _pct(lot.yield_final)),
        ("Yield after PAT", _pct(lot.yield_after_pat)),
        ("SYL level", "–" if lot.syl_level is None else f"L{lot.syl_level}"),
        ("SBL level", "–" if lot.sbl_level is None else f"L{lot.sbl_level}"),
    ]
    card_html = (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="v">{_e(v)}</div><div class="k">{_e(k)}</div></div>'
            for k, v in cards
        )
        + "</div>"
    )
    notes = "".join(f'<p class="muted note">{_e(n)}</p>' for n in lot.notes)
    pareto_rows = "".join(
        f"<tr><td>{_e(p.get('kind', 'H'))}{_e(p['bin'])}</td><td>{_e(p.get('name'))}</td>"
        f'<td class="num">{p["count"]:,}</td><td class="num">{_pct(p["fraction"])}</td>'
        f'<td class="num">{_pct(p["cumulative"])}</td></tr>'
        for p in lot.pareto
    )
    pareto = (
        '<h3>Bin Pareto</h3><table class="pareto"><thead><tr><th>Bin</th><th>Name</th>'
        "<th class='num'>Die</th><th class='num'>Share</th><th class='num'>Cumulative</th></tr>"
        f"</thead><tbody>{pareto_rows}</tbody></table>"
        if lot.pareto
        else ""
    )
    pat_rows = "".join(
        f'<tr><td>{_e(rule)}</td><td class="num">{_pct(loss, 3)}</td></tr>'
        for rule, loss in sorted(lot.pat_loss.items(), key=lambda kv: -kv[1])
        if loss > 0
    )
    pat = (
        '<h3>PAT yield loss</h3><table class="pat-loss"><thead><tr><th>Rule</th>'
        f"<th class='num'>Loss (share of tested die)</th></tr></thead><tbody>{pat_rows}</tbody></table>"
        if pat_rows
        else '<h3>PAT yield loss</h3><p class="muted">No die re-binned by PAT.</p>'
    )
    wafer_rows = "".join(
        f"<tr><td>{_e(w.get('wafer_id'))}</td><td class='num'>{_num(w.get('n_tested'))}</td>"
        f"<td class='num'>{_pct(w.get('yield_final'))}</td>"
        f"<td class='num'>{_pct(w.get('yield_after_pat'))}</td>"
        f"<td class='num'>{_num(w.get('n_clusters'))}</td>"
        f"<td class='num'>{_num(w.get('largest_cluster'))}</td>"
        f"<td class='num'>{_num(w.get('join_count_z'))}</td>"
        f"<td>{_e(w.get('pattern_class'))}</td><td>{_level(w.get('alarm_level'))}</td></tr>"
        for w in lot.wafers
    )
    wafers = (
        '<h3>Wafers</h3><table class="wafers"><thead><tr><th>Wafer</th><th class="num">Tested</th>'
        '<th class="num">Final yield</th><th class="num">After PAT</th><th class="num">Clusters</th>'
        '<th class="num">Largest</th><th class="num">Join-count z</th><th>Pattern</th>'
        f"<th>Alarm</th></tr></thead><tbody>{wafer_rows}</tbody></table>"
        if lot.wafers
        else ""
    )
    figs = "".join(
        _figure(
            lot.figures.get(name), caption, f"fig fig-{name}", f"{caption} for lot {lot.lot_id}"
        )
        for name, caption in LOT_FIGURES.items()
    )
    return (
        head
        + card_html
        + notes
        + f'<div class="figs">{figs}</div>'
        + pareto
        + pat
        + wafers
        + "</section>"
    )


def render_html(night: NightReport) -> str:
    """The report as one HTML document (str)."""
    nav = "".join(f'<a href="#{_anchor(lot.lot_id)}">{_e(lot.lot_id)}</a>' for lot in night.lots)
    meta = (
        f"night {_e(night.night_id)} · started {_e(night.started_at)} · finished {_e(night.finished_at)}"
        f" · lake {_e(night.lake)} · recipe {_e(night.recipe_hash)} · engine {_e(night.engine)}"
    )
    max_level = max(night.alarm_counts(), default=0)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<meta name='generator' content='backend-fab nightly'>"
        f"<title>backend-fab nightly {_e(night.night_id)}</title><style>{_CSS}</style></head>"
        f'<body data-night="{_e(night.night_id)}" data-max-alarm-level="{max_level}">'
        f"<header><h1>Nightly yield report</h1><div class='meta'>{meta}</div></header><main>"
        + (f"<nav>Lots: {nav}</nav>" if nav else "")
        + _alarms_html(night)
        + _failures_html(night)
        + _summary_html(night)
        + '<div id="lots">'
        + "".join(_lot_html(lot) for lot in night.lots)
        + "</div></main>"
        + f"<script>{_SCRIPT}</script></body></html>\n"
    )


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    json: Path


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_report(night: NightReport, out_dir: str | os.PathLike) -> ReportPaths:
    """Write ``night-<id>.html`` and ``night-<id>.json`` into ``out_dir`` (and ``latest.*``
    copies). Each file is replaced atomically, so a reader never sees half a report."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    page = render_html(night).encode("utf-8")
    summary = (json.dumps(night.to_json(), indent=2, default=str) + "\n").encode("utf-8")
    html_path = out / f"night-{night.night_id}.html"
    json_path = out / f"night-{night.night_id}.json"
    _atomic_write(html_path, page)
    _atomic_write(json_path, summary)
    _atomic_write(out / "latest.html", page)
    _atomic_write(out / "latest.json", summary)
    return ReportPaths(html_path, json_path)
