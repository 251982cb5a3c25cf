"""The HTML pieces of the run report (`fedctl report`, docs/report.md): images, tables, sections,
the model card as nested lists and tables, the page style and its render check. Escaping happens
here, once, for every value the report shows."""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fedctl.model_card import SECTIONS


def image_html(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def table_html(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell_text(v))}</td>" for v in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def cell_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(cell_text(v) for v in value) or "—"
    return "—" if value is None else str(value)


def _scalarish(value: Any) -> bool:
    """A value a table cell shows: a scalar, or a list of scalars (joined with commas)."""
    if isinstance(value, list):
        return all(not isinstance(v, Mapping | list) for v in value)
    return not isinstance(value, Mapping)


def card_html(value: Any) -> str:
    if isinstance(value, Mapping):
        items = "".join(
            f"<dt>{html.escape(str(k))}</dt><dd>{card_html(v)}</dd>" for k, v in value.items()
        )
        return f"<dl>{items}</dl>"
    flat = isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value)
    if flat and all(_scalarish(x) for v in value for x in v.values()):
        header = list(dict.fromkeys(k for v in value for k in v))  # a list of records: a table
        return table_html(header, [[v.get(k) for k in header] for v in value])
    if isinstance(value, list) and any(isinstance(v, Mapping | list) for v in value):
        return "<ul>" + "".join(f"<li>{card_html(v)}</li>" for v in value) + "</ul>"
    if isinstance(value, list) and value and all(isinstance(v, str) and len(v) > 40 for v in value):
        return "<ul>" + "".join(f"<li>{html.escape(v)}</li>" for v in value) + "</ul>"
    return html.escape(cell_text(value))


CHECK_SCRIPT = """<script>
/* Render check for tests and readers: marks <html data-render-check> "ok" only when every figure
   decoded (naturalWidth > 0) and no script error or failed resource load was seen. */
window.__reportErrors = [];
window.addEventListener("error", function (e) {
  window.__reportErrors.push(String((e && e.message) || (e && e.target && e.target.tagName)));
}, true);
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var ok = broken.length === 0 && window.__reportErrors.length === 0;
  document.documentElement.setAttribute("data-render-check",
    (ok ? "ok" : "broken") + " figures=" + imgs.length + " broken=" + broken.length +
    " errors=" + window.__reportErrors.length);
});
</script>"""

STYLE = """<style>
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
img{max-width:100%;border:1px solid #eee} table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;font-size:.9em}
th{background:#f3f3f3} dl{margin:.2em 0 .2em 1em} dt{font-weight:600} dd{margin:0 0 .3em 1em}
.note{color:#555;font-size:.92em;background:#f8f8f4;padding:.5em .8em;border-left:3px solid #cc9}
</style>"""


def section_html(ident: str, heading: str, body: str) -> str:
    return f'<section id="{ident}"><h2>{html.escape(heading)}</h2>{body}</section>'


def model_card_html(card: Mapping[str, Any]) -> str:
    parts = []
    for section in SECTIONS:
        heading = section.replace("_", " ").capitalize()
        parts.append(f'<h3 id="card-{section}">{heading}</h3>{card_html(card[section])}')
    return "".join(parts)
