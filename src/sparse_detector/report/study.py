"""The study report: ``report.md`` (figures linked) and a self-contained ``report.html`` (figures embedded).

Tables give the mean ± sample standard deviation over the seeds of each attention map (one seed: the value alone),
of COCO AP on the held-out data and of the attention readings of each site's last layer.
"""

from __future__ import annotations

import base64
import html
import json
import re
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..analysis.paibb import mixed_paibb_meaning
from ..files import write_atomically
from ..runs import ANALYSIS_DIRS, ANALYSIS_FILE
from ..text import counted, decimals
from .tables import markdown_table

if TYPE_CHECKING:  # the study imports this module; only the types flow back
    from ..study import RunOutcome, StudyConfig

AP_COLUMNS = {"AP": "AP", "AP50": "AP50", "AP75": "AP75", "AP_small": "APs", "AP_medium": "APm", "AP_large": "APl"}
ATTENTION_METRICS = {"gini": "Gini", "zeros_ratio": "zeros ratio"}
EMBEDDED_TYPES = {".png": "image/png", ".svg": "image/svg+xml"}
POINTS_MARK = "†"  # after a PAIBB read over sampling points in a column of attention mass on the grid


class Table(NamedTuple):
    """A report table: its header, its rows and a note written under it."""

    header: list[str]
    rows: list[list[str]]
    note: str = ""


def mean_std(values: Sequence[float]) -> str:
    """``mean ± std`` (sample std over seeds), the value alone for one seed, ``–`` for none."""
    values = [v for v in values if v is not None and v >= 0]  # COCO writes -1 where a size has no objects
    if not values:
        return "–"
    if len(values) == 1:
        return decimals(values[0])
    return f"{decimals(statistics.mean(values))} ± {decimals(statistics.stdev(values))}"


def _analysis(outcome: RunOutcome) -> dict[str, Any] | None:
    path = outcome.run_dir / ANALYSIS_DIRS[False] / ANALYSIS_FILE
    return json.loads(path.read_text()) if outcome.status == "done" and path.is_file() else None


def _site_reading(result: dict[str, Any], site: str, metric: str) -> float | None:
    """The last layer's mean of ``metric`` (or ``paibb``: of the head-averaged maps of matched queries) at ``site``."""
    entry = result["sites"].get(site, {})
    block = (entry.get("paibb") or {}).get("overall") if metric == "paibb" else entry.get("metrics", {}).get(metric)
    return block["per_layer"]["mean"][-1] if block else None


def _thresholds(results: Sequence[dict[str, Any]], site: str) -> set[float]:
    return {result["sites"][site]["zero_threshold"] for result in results if site in result["sites"]}


def _shared_threshold(results: Sequence[dict[str, Any]], site: str) -> float | None:
    """The zeros-ratio threshold every map uses at ``site``, or None where they differ (softmax maps count
    p <= 1e-6 as zero, sparse ones p <= 0)."""
    thresholds = _thresholds(results, site)
    return next(iter(thresholds)) if len(thresholds) == 1 else None


def _column_name(site: str, metric: str, threshold: float | None) -> str:
    name = f"{site} {ATTENTION_METRICS.get(metric, 'PAIBB')}"
    return f"{name} (p ≤ {threshold:g})" if metric == "zeros_ratio" and threshold is not None else name


def _threshold_note(records: Sequence[dict[str, Any]], site: str, metric: str, shared: float | None) -> str:
    """`` (p ≤ t)`` after a zeros ratio whose threshold is not the column's, else nothing."""
    thresholds = _thresholds([r["attention"] for r in records], site)
    if metric != "zeros_ratio" or shared is not None or not thresholds:
        return ""
    return " (p ≤ " + ", ".join(f"{t:g}" for t in sorted(thresholds)) + ")"


def _points_maps(by_map: dict[str, list[dict]], site: str) -> list[str]:
    """The maps whose PAIBB at ``site`` is read over sampling points where other maps read it as attention mass on the
    grid (the two in one column); empty where every map reads it alike."""
    keys = {
        name: {
            r["attention"]["sites"][site].get("keys") for r in records if _site_reading(r["attention"], site, "paibb")
        }
        for name, records in by_map.items()
    }
    points = [name for name, kinds in keys.items() if "points" in kinds]
    return points if any(kinds - {"points"} for kinds in keys.values()) else []


def study_tables(outcomes: Sequence[RunOutcome]) -> dict[str, Table]:
    """The report's tables: detection AP, attention readings (last layer per site) and the runs."""
    by_map: dict[str, list[dict]] = {}
    for outcome in outcomes:
        record = _analysis(outcome)
        by_map.setdefault(outcome.map, [])
        if record is not None:
            by_map[outcome.map].append(record)
    detection = Table(
        ["map", "runs", *AP_COLUMNS.values()],
        [
            [name, str(len(records)), *(mean_std([r["ap"][k] for r in records]) for k in AP_COLUMNS)]
            for name, records in by_map.items()
        ],
    )
    results = [r["attention"] for records in by_map.values() for r in records]
    sites = list(dict.fromkeys(site for result in results for site in result["sites"]))
    columns = [(site, metric) for site in sites for metric in ATTENTION_METRICS]
    columns += [(site, "paibb") for site in sites if any(r["sites"].get(site, {}).get("paibb") for r in results)]
    shared = {site: _shared_threshold(results, site) for site in sites}
    points = {site: _points_maps(by_map, site) for site in sites}
    header = ["map", *(_column_name(site, metric, shared[site]) for site, metric in columns)]
    rows = [
        [
            name,
            *(
                mean_std([_site_reading(r["attention"], site, metric) for r in records])
                + _threshold_note(records, site, metric, shared[site])
                + (f" {POINTS_MARK}" if metric == "paibb" and name in points[site] else "")
                for site, metric in columns
            ),
        ]
        for name, records in by_map.items()
    ]
    note = "; ".join(
        f"{POINTS_MARK} {site} PAIBB: {mixed_paibb_meaning(maps)}" for site, maps in points.items() if maps
    )
    runs = Table(
        ["run", "status", "minutes (all invocations)", "failed stage", "error"],
        [[o.name, o.status, f"{o.seconds / 60:.1f}", o.stage, o.error] for o in outcomes],
    )
    return {
        "Detection (COCO on the held-out data, best checkpoint)": detection,
        "Attention, last layer of each site (all queries; PAIBB: matched queries, head average)": Table(
            header, rows, note
        ),
        "Runs": runs,
    }


def maps_table(maps: dict[str, list[str]]) -> Table:
    """What each map of the study sets: its name as the other tables and the runs use it, and its overrides (on top
    of the preset and the study's shared ones)."""
    return Table(["map", "settings"], [[name, " ".join(overrides) or "(none)"] for name, overrides in maps.items()])


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    note = f"<p>{html.escape(table.note)}</p>" if table.note else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"


def _html_text(text: str) -> str:
    """A line of the Markdown report as HTML: escaped, its `code` spans as <code> (they showed their backticks)."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))


def _embedded(path: Path) -> str:
    kind = EMBEDDED_TYPES.get(path.suffix)
    if kind is None:  # PDF: linked, not embedded
        return f'<p><a href="{html.escape(path.name)}">{html.escape(path.name)}</a></p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.name)}" src="data:{kind};base64,{data}">'


def _figure_groups(outcomes: Sequence[RunOutcome], study_figures: Sequence[Path]) -> list[tuple[str, list[Path]]]:
    groups = [("All runs", list(study_figures))]
    groups += [(f"Run {o.name}", list(o.figures)) for o in outcomes if o.figures]
    return groups


def study_title(study: StudyConfig) -> str:
    """The report's heading: the study file's name (none for a plain ``study.yaml``), its maps and seeds."""
    name = Path(study.source).stem
    named = "" if name.lower() == "study" else f" {name}"
    return f"Study{named}: {', '.join(study.maps)} × seeds {study.seeds}"


def write_study_report(
    study_dir: Path,
    study: StudyConfig,
    outcomes: Sequence[RunOutcome],
    figures: Sequence[Path],
    minutes: float,
    not_drawn: Sequence[str] = (),
) -> list[Path]:
    """Write ``report.md`` and ``report.html`` into ``study_dir``; returns their paths. ``not_drawn``: the figures
    that failed, with why (the study's, and each run's after its run's name)."""
    tables = {"Maps": maps_table(study.maps), **study_tables(outcomes)} if study.maps else study_tables(outcomes)
    title = study_title(study)
    intro = (
        f"Preset `{study.preset}`, overrides `{' '.join(study.set) or '(none)'}`; "
        f"{counted(len(outcomes), 'run')}, this invocation took {minutes:.1f} min "
        f"(written {time.strftime('%Y-%m-%d %H:%M')}). Mean ± sample std over seeds; one seed: the value."
    )
    failed = [o for o in outcomes if o.status == "failed"]
    warning = f"**{len(failed)} run(s) failed**: {', '.join(o.name for o in failed)} (see Runs)." if failed else ""
    groups = _figure_groups(outcomes, figures)

    md = [f"# {title}", intro, warning]
    for heading, table in tables.items():
        escaped = [[cell.replace("|", "\\|") for cell in row] for row in table.rows]
        md += [f"## {heading}", "\n".join(markdown_table(table.header, escaped)), table.note]
    md.append("## Figures")
    md += [f"**Not drawn**: {reason}" for reason in not_drawn]
    for heading, paths in groups:
        md.append(f"### {heading}")
        md += [f"![{p.name}]({p.relative_to(study_dir).as_posix()})" for p in paths]
    md_path = study_dir / "report.md"
    write_atomically(md_path, "\n\n".join(part for part in md if part) + "\n")

    style = (
        "body{font-family:sans-serif;max-width:1400px;margin:auto}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}td:first-child{text-align:left}"
        "img{max-width:100%;display:block;margin:1em 0}.warning{color:#b00}"
    )
    page = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1><p>{_html_text(intro)}</p>",
    ]
    if warning:
        page.append(f"<p class='warning'>{html.escape(warning.replace('**', ''))}</p>")
    for heading, table in tables.items():
        page += [f"<h2>{html.escape(heading)}</h2>", _html_table(table)]
    page.append("<h2>Figures</h2>")
    page += [f"<p class='warning'>Not drawn: {html.escape(reason)}</p>" for reason in not_drawn]
    for heading, paths in groups:
        page.append(f"<h3>{html.escape(heading)}</h3>")
        page += [f"<h4>{html.escape(p.name)}</h4>{_embedded(p)}" for p in paths]
    page.append("</body></html>")
    html_path = study_dir / "report.html"
    write_atomically(html_path, "\n".join(page))
    return [md_path, html_path]
