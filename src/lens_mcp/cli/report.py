"""`lens-mcp report RECORD.jsonl|FOLDER ... -o report.html`: one self-contained HTML page for a person to review
an investigation. No network and no CDN: styles are inline and heatmaps are PNGs embedded as data URIs, drawn
from each recorded result with its model's `heatmaps()` (the same pictures as image=true).

Several records (every `lens-mcp call` writes its own) are merged in time order. The page reads as a story: a
summary (the records with their models and versions, the steps, calls, errors, the models with their weights
fingerprints), then the calls, each step's note (`call --note`, a batch line's "note") as a heading. Each call
shows its tool, time, seconds, arguments (a `pairs=` dataset is shown once, in full, where it first appears, and
named after that), the `meaning` line, warnings, the key numbers (top-level scalars, and the main result lists
such as top_paths or top cells as tables), its heatmaps, the error if it failed, and the full result folded away.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from pathlib import Path
from typing import Any

from lens_mcp.server.record import RecordFile

log = logging.getLogger(__name__)

MAX_TABLE_ROWS = 10
MAX_DRAWN_VALUES = 200_000
"""A recorded result holding more numbers than this is not drawn (the page would be tens of MB)."""
MAX_SHOWN_RESULT_CHARS = 100_000
"""The full result shown on the page is cut past this many characters (the record keeps all of it)."""
MAX_SCALAR_CHARS = 200
MAX_CELL_CHARS = 120
SKIPPED_SCALARS = {"meaning"}
DATASET_ARGUMENT = "pairs"

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2430; background: #f6f7f9; }
header { background: #1d2430; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 20px; }
header p { margin: 0; color: #c4cad4; }
main { padding: 18px 28px 40px; max-width: 1180px; }
section { background: #fff; border: 1px solid #dde1e7; border-radius: 8px; padding: 14px 18px; margin: 14px 0; }
section.error { border-left: 5px solid #c62828; }
section.ok { border-left: 5px solid #2e7d32; }
h2 { font-size: 16px; margin: 0 0 8px; }
h2 .tool { font-family: ui-monospace, monospace; }
h2.step { font-size: 18px; margin: 26px 0 4px; padding-left: 4px; border-bottom: 2px solid #1d2430; }
.meta { color: #5b6473; font-size: 12px; font-weight: normal; margin-left: 8px; }
.meaning { background: #eef4ff; border-radius: 6px; padding: 6px 10px; margin: 8px 0; }
.warning { background: #fff6e0; border-radius: 6px; padding: 6px 10px; margin: 8px 0; }
.errortext { background: #fdecea; border-radius: 6px; padding: 8px 10px; white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 12px; }
pre { background: #f3f4f6; border-radius: 6px; padding: 8px 10px; overflow-x: auto; font-size: 12px; margin: 6px 0; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border: 1px solid #e1e4e8; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f4f6; font-weight: 600; }
td.num { font-family: ui-monospace, monospace; text-align: right; }
.numbers { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.numbers p { margin: 4px 0 0; }
.figures { display: flex; flex-wrap: wrap; gap: 12px; }
.figures figure { margin: 0; }
.figures img { max-width: 100%; border: 1px solid #e1e4e8; border-radius: 4px; }
figcaption { font-size: 12px; color: #5b6473; }
details summary { cursor: pointer; color: #3a5ba0; }
code { font-family: ui-monospace, monospace; }
"""

# Counts the images that decoded (the browser test reads it); no network, no external script.
SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (img) { return img.complete && img.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images", loaded + "/" + images.length);
});
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _json(value: Any, indent: int | None = 1) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _scalar(value: Any) -> bool:
    return (
        value is None
        or isinstance(value, (bool, int, float))
        or (isinstance(value, str) and len(value) <= MAX_SCALAR_CHARS)
    )


def _cell(value: Any) -> str:
    if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)):
        return f'<td class="num">{_e(value)}</td>'
    if isinstance(value, (list, dict)):
        text = _json(value, None)
        return (
            f"<td><code>{_e(text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 3] + '...')}</code></td>"
        )
    return f"<td>{_e(value)}</td>"


def _table(rows: list[dict[str, Any]], caption: str = "") -> str:
    columns = list(dict.fromkeys(k for row in rows[:MAX_TABLE_ROWS] for k in row))
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(row.get(c)) for c in columns) + "</tr>" for row in rows[:MAX_TABLE_ROWS])
    more = f"first {MAX_TABLE_ROWS} of {len(rows)}" if len(rows) > MAX_TABLE_ROWS else ""
    caption = "; ".join(part for part in (caption, more) if part)
    return f"<table>{f'<caption>{_e(caption)}</caption>' if caption else ''}<tr>{head}</tr>{body}</table>"


def key_numbers(result: Any) -> str:
    """The top-level scalars as one table, and short lists of flat objects (top-k lists) as tables."""
    if not isinstance(result, dict):
        return f"<pre>{_e(_json(result))}</pre>"
    parts = []
    scalars = [(k, v) for k, v in result.items() if k not in SKIPPED_SCALARS and _scalar(v) and v is not None]
    if scalars:
        rows = "".join(f"<tr><th>{_e(k)}</th>{_cell(v)}</tr>" for k, v in scalars)
        parts.append(f"<div><p><b>numbers</b></p><table>{rows}</table></div>")
    for key, value in result.items():
        # A list of objects is a result's main table (top_paths, top cells, top edges): nested values are cut short.
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            parts.append(f"<div><p><b>{_e(key)}</b></p>{_table(value)}</div>")
    return f'<div class="numbers">{"".join(parts)}</div>'


def _count_values(value: Any, limit: int) -> int:
    """The numbers in a JSON value, counted up to just past `limit` (iteratively: a crafted record can nest deep)."""
    count, stack = 0, [value]
    while stack and count <= limit:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            count += 1
    return count


def _seconds(value: Any) -> float | None:
    """A recorded duration, or None when the record holds something else there."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def figures(tool: str, result: Any) -> str:
    """The heatmaps of a recorded result as embedded PNGs (empty when its tool draws none)."""
    from lens_mcp.server import images
    from lens_mcp.server.registry import result_models

    model_class = result_models().get(tool)
    if model_class is None or not images.supports_images(model_class) or not isinstance(result, dict):
        return ""
    if _count_values(result, MAX_DRAWN_VALUES) > MAX_DRAWN_VALUES:
        return (
            f'<p class="meta">heatmap not drawn: the result holds more than {MAX_DRAWN_VALUES:,} numbers '
            "(the report draws smaller results only; the record keeps all of it)</p>"
        )
    try:
        model = model_class.model_validate(result)
        maps = images.heatmaps_of(model)
    except Exception as exc:
        log.info("cannot draw %s from the record: %s", tool, exc)
        return f'<p class="meta">heatmap not drawn: the recorded result does not fit this version ({_e(type(exc).__name__)})</p>'
    parts = []
    for heatmap in maps[: images.MAX_IMAGES]:
        try:
            rendered = images.render_figure(heatmap)
        except Exception as exc:  # one picture that cannot be drawn never stops the page
            log.warning("cannot draw %r of %s: %s", heatmap.title, tool, exc)
            parts.append(f'<p class="meta">heatmap {_e(heatmap.title)!s} not drawn ({_e(type(exc).__name__)})</p>')
            continue
        data = base64.b64encode(rendered.png).decode("ascii")
        parts.append(
            f'<figure><img alt="{_e(heatmap.title)}" width="{rendered.width}" height="{rendered.height}" '
            f'src="data:image/png;base64,{data}"><figcaption>{_e(heatmap.title)} '
            f"({rendered.kilobytes:.0f} KB)</figcaption></figure>"
        )
    return f'<div class="figures">{"".join(parts)}</div>' if parts else ""


class Datasets:
    """The `pairs=` datasets of a record, each shown in full once (where it first appears) and named after that."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, int]] = {}  # dataset JSON -> (name, the call that showed it)

    def arguments(self, arguments: dict[str, Any], call: int) -> tuple[dict[str, Any], str]:
        """(the arguments to show, the dataset table to show with them, if this is its first appearance)."""
        pairs = arguments.get(DATASET_ARGUMENT)
        if not isinstance(pairs, list) or not pairs:
            return arguments, ""
        key = _json(pairs, None)
        shown = dict(arguments)
        if key in self._seen:
            name, first = self._seen[key]
            shown[DATASET_ARGUMENT] = f"dataset {name} ({len(pairs)} items, shown at call #{first})"
            return shown, ""
        name = f"D{len(self._seen) + 1}"
        self._seen[key] = (name, call)
        shown[DATASET_ARGUMENT] = f"dataset {name} ({len(pairs)} items, below)"
        rows = [item if isinstance(item, dict) else {"item": item} for item in pairs]
        return shown, f"<div><p><b>dataset {name}</b></p>{_table(rows, f'{len(pairs)} items')}</div>"


def _steps(entries: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(call number on the page, note) for every call that carries a note."""
    return [(i, str(e["note"])) for i, e in enumerate(entries, start=1) if isinstance(e.get("note"), str)]


def _sources(record: RecordFile) -> str:
    """One row per record file: its calls, time span, models and versions (only when several were merged)."""
    if len(record.sources) <= 1:
        return ""
    rows = []
    for path in record.sources:
        mine = [e for e in record.entries if e.get("file") == path.name]
        specs = sorted({str(e["model"].get("spec")) for e in mine if isinstance(e.get("model"), dict)})
        version = next((e["versions"] for e in mine if isinstance(e.get("versions"), dict)), {})
        times = [str(e.get("time")) for e in mine if e.get("time")]
        rows.append(
            f"<tr><td><code>{_e(path.name)}</code></td>{_cell(len(mine))}"
            f"<td>{_e(times[0] if times else '?')} to {_e(times[-1] if times else '?')}</td>"
            f"<td>{_e(', '.join(specs) or '?')}</td>"
            f"<td>{_e(', '.join(f'{k} {v}' for k, v in version.items()))}</td></tr>"
        )
    return (
        f"<p><b>Records</b> ({len(record.sources)} files, calls merged in time order)</p>"
        "<table><tr><th>file</th><th>calls</th><th>time</th><th>models</th><th>versions</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _summary(record: RecordFile) -> str:
    entries = record.entries
    errors = sum(not e.get("ok") for e in entries)
    models: dict[str, dict[str, Any]] = {}
    versions: dict[str, dict[str, Any]] = {}
    for entry in entries:
        model = entry.get("model")
        if isinstance(model, dict):
            models.setdefault(_json(model, None), model)
        if isinstance(entry.get("versions"), dict):
            versions.setdefault(_json(entry["versions"], None), entry["versions"])
    times = [e.get("time") for e in entries if e.get("time")]
    seconds = sum(_seconds(e.get("seconds")) or 0.0 for e in entries)
    model_rows = "".join(
        f"<tr><td>{_e(m.get('spec'))}</td><td>{_e(m.get('source'))}</td><td>{_e(m.get('device'))}</td>"
        f"<td>{_e(m.get('dtype'))}</td><td><code>{_e(m.get('fingerprint'))}</code></td></tr>"
        for m in models.values()
    )
    version_rows = "".join(
        "<tr>" + "".join(f"<td>{_e(k)} {_e(v)}</td>" for k, v in version.items()) + "</tr>"
        for version in versions.values()
    )
    steps = "".join(f'<li><a href="#step-{n}">{_e(note)}</a> (call #{n})</li>' for n, note in _steps(entries))
    skipped = "".join(f"<li>{_e(s)}</li>" for s in record.skipped)
    return (
        '<section id="summary"><h2>Summary</h2>'
        f"<p>{len(entries)} calls, {len(entries) - errors} ok, {errors} failed; "
        f"{_e(times[0] if times else '?')} to {_e(times[-1] if times else '?')}; {seconds:.1f} s of tool time.</p>"
        + (f"<p><b>Steps</b></p><ol>{steps}</ol>" if steps else "")
        + _sources(record)
        + "<p><b>Models</b></p><table><tr><th>spec</th><th>source</th><th>device</th><th>dtype</th>"
        f"<th>weights fingerprint</th></tr>{model_rows}</table>"
        f"<p><b>Versions</b></p><table>{version_rows}</table>"
        + (f"<p><b>Lines not read</b></p><ul>{skipped}</ul>" if skipped else "")
        + "</section>"
    )


def _call(entry: dict[str, Any], number: int, datasets: Datasets) -> str:
    tool = str(entry.get("tool"))
    ok = bool(entry.get("ok"))
    result = entry.get("result")
    origin = (
        f"{entry['file']} #{entry.get('n', '?')}, line {entry.get('line')}"
        if "file" in entry
        else (f"record line {entry.get('line')}")
    )
    head = (
        f'<h2>#{number} <span class="tool">{_e(tool)}</span>'
        f'<span class="meta">{_e(entry.get("time", ""))} · {_e(_seconds(entry.get("seconds")) or "?")} s · '
        f"{'ok' if ok else 'error'} · {_e(origin)}</span></h2>"
    )
    arguments = entry.get("arguments") if isinstance(entry.get("arguments"), dict) else entry.get("arguments") or {}
    dataset = ""
    if isinstance(arguments, dict):
        arguments, dataset = datasets.arguments(arguments, number)
    body = [f"<pre>{_e(_json(arguments))}</pre>", dataset]
    if not ok:
        body.append(f'<div class="errortext">{_e(entry.get("error"))}</div>')
    elif isinstance(result, dict):
        if result.get("meaning"):
            body.append(f'<div class="meaning">{_e(result["meaning"])}</div>')
        for warning in result.get("warnings") or []:
            body.append(f'<div class="warning">warning: {_e(warning)}</div>')
        body.append(figures(tool, result))
        body.append(key_numbers(result))
        full = _json(result)
        if len(full) > MAX_SHOWN_RESULT_CHARS:
            full = full[:MAX_SHOWN_RESULT_CHARS] + f"\n... cut here: {len(full):,} characters in all, in the record"
        body.append(f"<details><summary>full result</summary><pre>{_e(full)}</pre></details>")
    else:
        body.append(f"<pre>{_e(_json(result))}</pre>")
    step = f'<h2 class="step" id="step-{number}">{_e(entry["note"])}</h2>' if isinstance(entry.get("note"), str) else ""
    return f'{step}<section class="{"ok" if ok else "error"}" id="call-{number}">{head}{"".join(body)}</section>'


def render_report(record: RecordFile) -> str:
    if len(record.sources) > 1:
        title = f"lens-mcp records: {len(record.sources)} files in {record.path.name or record.path}"
    else:
        title = f"lens-mcp record {record.path.name}"
    datasets = Datasets()
    calls = "".join(_call(entry, number, datasets) for number, entry in enumerate(record.entries, start=1))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><p>An investigation with lens-mcp: every tool call, its arguments, key "
        "numbers, heatmaps and errors.</p></header>"
        f"<main>{_summary(record)}{calls}</main><script>{SCRIPT}</script></body></html>\n"
    )


def write_report(record: RecordFile, output: str | Path) -> Path:
    path = Path(output)
    path.write_text(render_report(record), encoding="utf-8")
    return path
