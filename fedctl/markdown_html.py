"""A minimal Markdown → HTML conversion for the documents fedctl writes (the DPIA).

A DPO often needs a file to open in a browser, print or attach to a register, and the consortium's
hosts should not need a Markdown package for that. Only the subset fedctl itself emits is
supported: ATX headings, paragraphs, `-` and `1.` lists, pipe tables, inline `code` and
**bold**. Everything is HTML-escaped first, so a plan's text can never inject markup.
"""

from __future__ import annotations

import html
import re

_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;"
    "line-height:1.45;color:#222}table{border-collapse:collapse;margin:1em 0}"
    "th,td{border:1px solid #bbb;padding:.3em .6em;text-align:left;vertical-align:top}"
    "th{background:#eee}code{background:#f3f3f3;padding:0 .2em}h1,h2{border-bottom:1px solid #ddd}"
)
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_BULLET = re.compile(r"^\s*[-*]\s+(.*)$")
_NUMBERED = re.compile(r"^\s*\d+\.\s+(.*)$")
_RULE = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?$")


def inline(text: str) -> str:
    """Escape, then render `code` and **bold** (code first: its content stays literal)."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if len(part) >= 2 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
        else:
            escaped = html.escape(part)
            out.append(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped))
    return "".join(out)


def _cells(row: str) -> list[str]:
    """A pipe-table row's cells; `\\|` is a literal bar inside a cell."""
    body = row.strip().removeprefix("|").removesuffix("|")
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", body)]


def to_html(markdown: str, title: str = "Document") -> str:
    """One self-contained HTML page (inline CSS, no script, no external resource)."""
    lines = markdown.splitlines()
    body: list[str] = []
    paragraph: list[str] = []
    i = 0

    def flush() -> None:
        if paragraph:
            body.append(f"<p>{inline(' '.join(paragraph))}</p>")
            paragraph.clear()

    while i < len(lines):
        line = lines[i]
        heading = _HEADING.match(line)
        if not line.strip():
            flush()
            i += 1
        elif heading:
            flush()
            level = len(heading.group(1))
            body.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|") and i + 1 < len(lines) and _RULE.match(lines[i + 1]):
            flush()
            head = "".join(f"<th>{inline(c)}</th>" for c in _cells(line))
            rows = []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in _cells(lines[i])))
                i += 1
            body.append(f"<table><tr>{head}</tr>{''.join(r + '</tr>' for r in rows)}</table>")
        elif _BULLET.match(line) or _NUMBERED.match(line):
            flush()
            pattern, tag = (_BULLET, "ul") if _BULLET.match(line) else (_NUMBERED, "ol")
            items: list[str] = []
            while i < len(lines) and lines[i].strip():
                item = pattern.match(lines[i])
                if item:
                    items.append(item.group(1))
                elif items and lines[i].startswith("  "):  # a wrapped item continues
                    items[-1] += " " + lines[i].strip()
                else:
                    break
                i += 1
            body.append(f"<{tag}>" + "".join(f"<li>{inline(t)}</li>" for t in items) + f"</{tag}>")
        else:
            paragraph.append(line.strip())
            i += 1
    flush()
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
