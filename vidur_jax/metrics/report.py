"""``report.html``: one self-contained page per run dir, built from the run dir's files.

Opened from disk with no server and no network: the data is a JSON block in the page,
the charts are SVG drawn by a small inline script, the figures already in the run dir
(``plots/*.png``, a study's ``<name>.png``) are inlined as base64 PNGs. It shows

* the run's title (what every config shares: model, GPU, parallelism, workload);
* for a search (``search.csv`` / ``best_config.json``): the answer (the best config per
  SLO) and the Pareto front of latency vs QPS per dollar, hovering a point shows its
  config;
* ``summary.csv`` (or ``sweep_summary.csv``) as a table sorted by clicking a heading;
* CDFs of TTFT and e2e latency per config from ``requests.parquet`` (hover: config,
  value), then the other PNG figures (the TBT CDF, a study's figure);
* ``sensitivity.csv`` when present.

Columns are read defensively (a file from an older or newer version renders what it
has). :func:`write_report` writes the page atomically and returns its path.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vidur_jax.metrics import table
from vidur_jax.metrics.io import atomic_path, to_jsonable
from vidur_jax.metrics.terminal import PRINT_METRICS, describe_run

#: Points kept per CDF line (evenly spaced in rank), so a page stays small.
CDF_POINTS = 200
#: Rows of a table shown in the page (the CSV has them all).
MAX_ROWS = 2000
#: search.csv columns named in a point's hover text, when present.
SEARCH_HOVER = (
    "name",
    "model",
    "device",
    "tp",
    "pp",
    "replicas",
    "scheduler",
    "chunk_size",
    "batch_cap",
    "num_gpus",
    "cost_per_hour",
    "capacity_qps",
    "qps_per_dollar",
    "ttft_p90",
    "tbt_p99",
)


def _read_csv(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path) if path.is_file() else None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None


def _records(df: pd.DataFrame) -> dict[str, Any]:
    df = df.head(MAX_ROWS)
    rows = [
        [to_jsonable(v) if v is not pd.NA else None for v in r] for r in df.itertuples(index=False)
    ]
    return {"columns": [str(c) for c in df.columns], "rows": rows, "total": None}


def _key_columns_first(summary: pd.DataFrame) -> pd.DataFrame:
    """``summary`` with its id, the knobs that vary and the printed metrics first (as on
    the terminal), then every other column in file order."""
    front = ["job", "config_id", *table.varying_knobs(summary), *(m for m, _ in PRINT_METRICS)]
    front = [c for c in dict.fromkeys(front) if c in summary.columns]
    return summary[[*front, *(c for c in summary.columns if c not in front)]]


def _cdf_series(requests: pd.DataFrame, labels: dict[int, str]) -> dict[str, list[dict[str, Any]]]:
    """Per metric, one ``{name, points}`` line per config: (latency s, fraction)."""
    done = requests[np.isfinite(requests["completed_at"].to_numpy(dtype=float))]
    out: dict[str, list[dict[str, Any]]] = {"TTFT": [], "e2e": []}
    for cid, g in done.groupby("config_id", sort=True):
        for metric, col in (("TTFT", "first_token_at"), ("e2e", "completed_at")):
            x = np.sort((g[col] - g["arrived_at"]).to_numpy(dtype=float))
            if not x.size:
                continue
            idx = np.unique(np.linspace(0, x.size - 1, min(CDF_POINTS, x.size)).round().astype(int))
            pts = [[float(x[i]), (i + 1) / x.size] for i in idx]
            out[metric].append({"name": labels.get(int(cid), f"config {cid}"), "points": pts})
    return out


def _pareto(search: pd.DataFrame, x: str, y: str) -> list[int]:
    """Row positions on the front: no other point has lower-or-equal ``x`` and higher ``y``."""
    vals = search[[x, y]].to_numpy(dtype=float)
    ok = [i for i in range(len(vals)) if np.isfinite(vals[i]).all() and vals[i, 1] > 0]
    front, best = [], -math.inf
    for i in sorted(ok, key=lambda i: (vals[i, 0], -vals[i, 1])):
        if vals[i, 1] > best:
            front.append(i)
            best = vals[i, 1]
    return front


def _search_part(run_dir: Path) -> dict[str, Any] | None:
    search = _read_csv(run_dir / "search.csv")
    best_path = run_dir / "best_config.json"
    best = None
    if best_path.is_file():
        try:
            best = json.loads(best_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            best = {"error": "best_config.json could not be read"}
    if search is None and best is None:
        return None
    part: dict[str, Any] = {"best": best, "table": None, "scatter": None}
    if search is not None:
        part["table"] = _records(search)
        x = next((c for c in ("ttft_p90", "cost_per_hour", "num_gpus") if c in search), None)
        y = next((c for c in ("qps_per_dollar", "capacity_qps") if c in search), None)
        if x and y:
            meets = [c for c in search.columns if str(c).startswith("meets_slo")]
            # an unmeasured (flagged) config is never a point of the front, nor plotted
            flagged = [
                "flag" in search and not _blank(v) and str(v).strip() != ""
                for v in (search["flag"] if "flag" in search else [None] * len(search))
            ]
            measured = [i for i, f in enumerate(flagged) if not f]
            front = {measured[j] for j in _pareto(search.iloc[measured], x, y)}
            points = []
            for i, (_, row) in enumerate(search.iterrows()):
                xv, yv = row[x], row[y]
                if flagged[i] or not (np.isfinite(float(xv)) and np.isfinite(float(yv))):
                    continue
                tip = ", ".join(
                    f"{c}={_fmt(row[c])}"
                    for c in SEARCH_HOVER
                    if c in search and not _blank(row[c])
                )
                ok = bool(row[meets[0]]) if meets and not _blank(row[meets[0]]) else None
                points.append(
                    {"x": float(xv), "y": float(yv), "tip": tip, "front": i in front, "meets": ok}
                )
            part["scatter"] = {"x": x, "y": y, "points": points}
    return part


def _blank(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}"
    return str(v)


def _images(run_dir: Path) -> list[dict[str, str]]:
    pngs = sorted(run_dir.glob("*.png")) + sorted((run_dir / "plots").glob("*.png"))
    return [
        {
            "name": p.relative_to(run_dir).as_posix(),
            "data": base64.b64encode(p.read_bytes()).decode("ascii"),
        }
        for p in pngs
    ]


def report_data(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Everything :func:`write_report` puts in the page, as plain JSON-able data."""
    root = Path(run_dir)
    summary = _read_csv(root / "summary.csv")
    if summary is None:
        summary = _read_csv(root / "sweep_summary.csv")
    data: dict[str, Any] = {"title": root.name, "subtitle": "", "summary": None, "cdfs": None}
    if summary is not None and len(summary):
        data["subtitle"] = describe_run(summary)
        data["summary"] = _records(_key_columns_first(summary))
        data["summary"]["total"] = len(summary)
        labels = table.config_labels(summary, ignore=("job", "overrides"))
        req_path = root / "requests.parquet"
        if req_path.is_file() and "config_id" in summary:
            requests = pd.read_parquet(req_path)
            if {"config_id", "arrived_at", "first_token_at", "completed_at"} <= set(requests):
                data["cdfs"] = _cdf_series(requests, labels)
    data["search"] = _search_part(root)
    sens = _read_csv(root / "sensitivity.csv")
    data["sensitivity"] = _records(sens) if sens is not None else None
    shown = {"plots/ttft_cdf.png", "plots/e2e_cdf.png"} if data["cdfs"] else set()
    data["images"] = [im for im in _images(root) if im["name"] not in shown]
    return data


def write_report(run_dir: str | os.PathLike, title: str | None = None) -> Path:
    """Write ``report.html`` into ``run_dir`` from the files there; returns its path."""
    data = report_data(run_dir)
    if title:
        data["title"] = title
    payload = json.dumps(to_jsonable(data), allow_nan=False).replace("</", "<\\/")
    page = _PAGE.replace("__TITLE__", html.escape(str(data["title"]))).replace("__DATA__", payload)
    path = Path(run_dir) / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


_PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vidur_jax report: __TITLE__</title>
<style>
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:20px;margin:0}h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#555;margin:4px 0 16px}
.wrap{overflow-x:auto;max-height:520px;border:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;white-space:nowrap}
th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:right}
th{position:sticky;top:0;background:#f4f6f8;cursor:pointer;user-select:none}
th.asc::after{content:" \25B2"}th.desc::after{content:" \25BC"}
td.s{text-align:left}tr:hover td{background:#fafbd8}
.charts{display:flex;flex-wrap:wrap;gap:16px}
.chart{border:1px solid #eee;padding:6px}
.answer{background:#eef7ee;border:1px solid #9c9;padding:10px 14px;margin:8px 0}
.answer b{font-size:15px}
.legend{font-size:11px;display:flex;flex-wrap:wrap;gap:4px 12px;max-width:620px}
.legend span::before{content:"";display:inline-block;width:10px;height:10px;margin-right:4px;background:var(--c)}
img{max-width:640px;border:1px solid #eee}
.note{color:#777;font-size:12px}
</style></head>
<body>
<h1 id="title"></h1><div class="sub" id="subtitle"></div>
<div id="main"></div>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const COLORS = ["#1f77b4","#ff7f0e","#2ca02c","#d62728","#9467bd","#8c564b","#e377c2","#7f7f7f","#bcbd22","#17becf"];
const main = document.getElementById("main");
const NS = "http://www.w3.org/2000/svg";
function el(tag, attrs, parent, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(NS, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}
function fmt(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : (Math.abs(v) >= 1e4 || Math.abs(v) < 1e-3 && v !== 0 ? v.toExponential(3) : String(+v.toPrecision(4)));
  return String(v);
}
function section(title) { el("h2", {}, main, title); return el("div", {}, main); }
function sortable(part, data, note) {
  if (note) el("div", {class: "note"}, part, note);
  const wrap = el("div", {class: "wrap"}, part);
  const t = el("table", {}, wrap);
  const head = el("tr", {}, el("thead", {}, t));
  const body = el("tbody", {}, t);
  const rows = data.rows.slice();
  function fill() {
    body.textContent = "";
    for (const r of rows) {
      const tr = el("tr", {}, body);
      r.forEach(v => el("td", typeof v === "string" ? {class: "s"} : {}, tr, fmt(v)));
    }
  }
  data.columns.forEach((c, j) => {
    const th = el("th", {title: "click to sort"}, head, c);
    th.addEventListener("click", () => {
      const desc = th.classList.contains("asc");
      head.querySelectorAll("th").forEach(h => h.classList.remove("asc", "desc"));
      th.classList.add(desc ? "desc" : "asc");
      const s = desc ? -1 : 1;
      rows.sort((a, b) => {
        const x = a[j], y = b[j];
        if (x === null) return 1; if (y === null) return -1;
        return (typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y))) * s;
      });
      fill();
    });
  });
  fill();
}
function ticks(lo, hi, n) {
  const step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n || 1)));
  const m = [1, 2, 5, 10].find(k => (hi - lo) / (k * step) <= n) * step;
  const out = [];
  for (let v = Math.ceil(lo / m) * m; v <= hi + 1e-12; v += m) out.push(+v.toPrecision(12));
  return out;
}
// series: [{name, color, points: [[x, y, tip?], ...], line: bool, r}]; hover = native SVG <title>
function chart(parent, series, xlabel, ylabel, title) {
  const W = 600, H = 360, L = 60, R = 12, T = 28, B = 44;
  const box = el("div", {class: "chart"}, parent);
  const svg = el("svg:svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`}, box);
  const all = series.flatMap(s => s.points);
  if (!all.length) return;
  let [x0, x1] = [Math.min(...all.map(p => p[0])), Math.max(...all.map(p => p[0]))];
  let [y0, y1] = [Math.min(0, ...all.map(p => p[1])), Math.max(...all.map(p => p[1]))];
  if (x1 === x0) { x1 = x0 + 1; } if (y1 === y0) { y1 = y0 + 1; }
  const px = x => L + (x - x0) / (x1 - x0) * (W - L - R), py = y => H - B - (y - y0) / (y1 - y0) * (H - T - B);
  el("svg:text", {x: L, y: 16, "font-size": 12, "font-weight": "bold"}, svg, title);
  for (const v of ticks(x0, x1, 6)) {
    el("svg:line", {x1: px(v), x2: px(v), y1: T, y2: H - B, stroke: "#eee"}, svg);
    el("svg:text", {x: px(v), y: H - B + 14, "font-size": 10, "text-anchor": "middle"}, svg, fmt(v));
  }
  for (const v of ticks(y0, y1, 5)) {
    el("svg:line", {x1: L, x2: W - R, y1: py(v), y2: py(v), stroke: "#eee"}, svg);
    el("svg:text", {x: L - 4, y: py(v) + 3, "font-size": 10, "text-anchor": "end"}, svg, fmt(v));
  }
  el("svg:rect", {x: L, y: T, width: W - L - R, height: H - T - B, fill: "none", stroke: "#999"}, svg);
  el("svg:text", {x: (L + W - R) / 2, y: H - 8, "font-size": 11, "text-anchor": "middle"}, svg, xlabel);
  el("svg:text", {x: 12, y: (T + H - B) / 2, "font-size": 11, "text-anchor": "middle", transform: `rotate(-90 12 ${(T + H - B) / 2})`}, svg, ylabel);
  series.forEach((s, k) => {
    const c = s.color || COLORS[k % COLORS.length];
    if (s.line) el("svg:polyline", {points: s.points.map(p => `${px(p[0])},${py(p[1])}`).join(" "), fill: "none", stroke: c, "stroke-width": 1.5}, svg);
    s.points.forEach(p => {
      // a line's points are invisible hover targets unless the series asks for dots
      const hidden = s.line && !s.dots;
      const dot = el("svg:circle", {cx: px(p[0]), cy: py(p[1]), r: 4, fill: c, "fill-opacity": hidden ? 0.0 : 0.8, stroke: hidden ? "none" : "#333", "stroke-width": 0.5}, svg);
      el("svg:title", {}, dot, p[2] || `${s.name}: ${xlabel} ${fmt(p[0])}, ${ylabel} ${fmt(p[1])}`);
    });
  });
  const leg = el("div", {class: "legend"}, box);
  series.forEach((s, k) => el("span", {style: `--c:${s.color || COLORS[k % COLORS.length]}`}, leg, s.name));
}
function answer(part, best) {
  const box = el("div", {class: "answer"}, part);
  if (best && best.best && typeof best.best === "object") {
    for (const [slo, entry] of Object.entries(best.best)) {
      const row = entry && typeof entry === "object" ? (entry.best !== undefined ? entry.best : entry) : null;
      const p = el("div", {}, box);
      if (!row) { el("b", {}, p, `SLO ${slo}: no config meets it`); continue; }
      const name = row.name || ["model", "device", "tp", "pp", "replicas", "scheduler"].filter(k => k in row).map(k => `${k}=${fmt(row[k])}`).join(", ");
      el("b", {}, p, `SLO ${slo}: ${name}`);
      const keys = ["capacity_qps", "qps_per_dollar", "cost_per_hour", "num_gpus", "ttft_p90", "tbt_p99"].filter(k => k in row);
      el("div", {}, p, keys.map(k => `${k} ${fmt(row[k])}`).join(" · "));
    }
  } else {
    el("pre", {}, box, JSON.stringify(best, null, 2));
  }
}
document.getElementById("title").textContent = "vidur_jax report: " + D.title;
document.getElementById("subtitle").textContent = D.subtitle || "";
if (D.search) {
  const part = section("Answer: the best deployment");
  if (D.search.best) answer(part, D.search.best); else el("div", {class: "note"}, part, "no best_config.json in this run dir");
  if (D.search.scatter) {
    const sc = D.search.scatter;
    const front = sc.points.filter(p => p.front).sort((a, b) => a.x - b.x);
    const groups = [
      {name: "meets the SLO", color: "#2ca02c", points: sc.points.filter(p => p.meets === true && !p.front).map(p => [p.x, p.y, p.tip])},
      {name: "misses the SLO", color: "#bbbbbb", points: sc.points.filter(p => p.meets !== true && !p.front).map(p => [p.x, p.y, p.tip])},
      {name: "Pareto front", color: "#d62728", line: true, dots: true, points: front.map(p => [p.x, p.y, "Pareto front: " + p.tip])},
    ];
    const pp = section("Pareto front (hover a point for its config)");
    chart(pp, groups, sc.x, sc.y, `${sc.y} vs ${sc.x}`);
  }
  if (D.search.table) sortable(section("search.csv"), D.search.table, "one row per grid point; click a heading to sort");
}
if (D.summary) {
  const n = D.summary.total;
  sortable(section(`Summary: ${n} configuration${n === 1 ? "" : "s"}`), D.summary,
           n > D.summary.rows.length ? `first ${D.summary.rows.length} rows of ${n} (all in summary.csv)` : "click a heading to sort; times in seconds");
}
if (D.cdfs) {
  const part = section("Latency CDFs (hover a point for its config)");
  const charts = el("div", {class: "charts"}, part);
  for (const [metric, lines] of Object.entries(D.cdfs)) {
    chart(charts, lines.map(s => ({name: s.name, line: true, points: s.points})), `${metric} (s)`, "fraction of requests", `${metric} CDF`);
  }
}
if (D.sensitivity) sortable(section("Sensitivities (sensitivity.csv)"), D.sensitivity);
if (D.images.length) {
  const part = section("Figures");
  const charts = el("div", {class: "charts"}, part);
  for (const im of D.images) {
    const fig = el("figure", {}, charts);
    el("img", {src: "data:image/png;base64," + im.data, alt: im.name}, fig);
    el("figcaption", {class: "note"}, fig, im.name);
  }
}
if (!main.children.length) el("p", {}, main, "This run dir holds no summary.csv, search.csv or figures yet.");
</script>
</body></html>
"""
