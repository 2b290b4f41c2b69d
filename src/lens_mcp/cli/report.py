"""`lens-mcp report RECORD.jsonl -o report.html`: one self-contained HTML page for a person to review an
investigation. No network and no CDN: styles are inline and heatmaps are PNGs embedded as data URIs, drawn
from each recorded result with its model's `heatmaps()` (the same pictures as image=true).

The page: a summary (record, calls, errors, the models with their weights fingerprints, the package versions),
then one section per call: tool, time, seconds, arguments, the `meaning` line, warnings, the key numbers (the
result's top-level scalars and short top-k tables), its heatmaps, the error if it failed, and the full result
JSON folded away.
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
SKIPPED_SCALARS = {"meaning"}

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
        return f"<td><code>{_e(_json(value, None))}</code></td>"
    return f"<td>{_e(value)}</td>"


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
        if (
            isinstance(value, list)
            and value
            and all(isinstance(item, dict) for item in value)
            and all(all(_scalar(v) for v in item.values()) for item in value)
        ):
            columns = list(dict.fromkeys(k for item in value for k in item))
            head = "".join(f"<th>{_e(c)}</th>" for c in columns)
            body = "".join(
                "<tr>" + "".join(_cell(item.get(c)) for c in columns) + "</tr>" for item in value[:MAX_TABLE_ROWS]
            )
            more = f"<caption>first {MAX_TABLE_ROWS} of {len(value)}</caption>" if len(value) > MAX_TABLE_ROWS else ""
            parts.append(f"<div><p><b>{_e(key)}</b></p><table>{more}<tr>{head}</tr>{body}</table></div>")
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
    skipped = "".join(f"<li>{_e(s)}</li>" for s in record.skipped)
    return (
        '<section id="summary"><h2>Summary</h2>'
        f"<p>{len(entries)} calls, {len(entries) - errors} ok, {errors} failed; "
        f"{_e(times[0] if times else '?')} to {_e(times[-1] if times else '?')}; {seconds:.1f} s of tool time.</p>"
        "<p><b>Models</b></p><table><tr><th>spec</th><th>source</th><th>device</th><th>dtype</th>"
        f"<th>weights fingerprint</th></tr>{model_rows}</table>"
        f"<p><b>Versions</b></p><table>{version_rows}</table>"
        + (f"<p><b>Lines not read</b></p><ul>{skipped}</ul>" if skipped else "")
        + "</section>"
    )


def _call(entry: dict[str, Any]) -> str:
    tool = str(entry.get("tool"))
    ok = bool(entry.get("ok"))
    result = entry.get("result")
    head = (
        f'<h2>#{_e(entry.get("n", "?"))} <span class="tool">{_e(tool)}</span>'
        f'<span class="meta">{_e(entry.get("time", ""))} · {_e(_seconds(entry.get("seconds")) or "?")} s · '
        f"{'ok' if ok else 'error'} · record line {_e(entry.get('line'))}</span></h2>"
    )
    body = [f"<pre>{_e(_json(entry.get('arguments') or {}))}</pre>"]
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
    return f'<section class="{"ok" if ok else "error"}" id="call-{_e(entry.get("n"))}">{head}{"".join(body)}</section>'


def render_report(record: RecordFile) -> str:
    title = f"lens-mcp record {record.path.name}"
    calls = "".join(_call(entry) for entry in record.entries)
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
