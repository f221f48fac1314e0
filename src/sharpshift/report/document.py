"""A report as a list of sections of simple blocks, rendered to Markdown (+ PNG files) or to one HTML page.

The HTML page is self-contained: CSS inline, every image a base64 data URI, no network access. A small
script at the end of the page checks that every image decoded and that no script error happened, and
writes the verdict into `<p id="report-status" data-status="ok|error">`; a headless browser's
`--dump-dom` reads it back (tests/test_report.py).
"""
from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field


@dataclass
class Text:
    text: str  # a paragraph; `backticks` become code


@dataclass
class Code:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list]
    caption: str = ""


@dataclass
class Image:
    name: str  # file stem in Markdown's asset folder, unique within a report
    png: bytes
    caption: str = ""


@dataclass
class Section:
    key: str  # stable id (HTML anchor, tests look for it)
    title: str
    blocks: list = field(default_factory=list)


def fmt(value) -> str:
    """A table cell: fractions with 4 decimals, larger floats with up to 6 significant digits, None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.4g}"
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.6g}"
    return str(value)


# ---------------------------------------------------------------- Markdown


def _md_cell(value) -> str:
    return fmt(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, sections: list[Section], asset_dir: str) -> tuple[str, dict[str, bytes]]:
    """(Markdown text, {relative path: PNG bytes}); images are linked as asset_dir/NAME.png."""
    lines = [f"# {title}", "", "Contents: " + " · ".join(f"[{s.title}](#{s.key})" for s in sections), ""]
    assets: dict[str, bytes] = {}
    for s in sections:
        lines += [f'<a id="{s.key}"></a>', "", f"## {s.title}", ""]
        for b in s.blocks:
            if isinstance(b, Text):
                lines += [b.text, ""]
            elif isinstance(b, Code):
                lines += ["```", b.text.rstrip("\n"), "```", ""]
            elif isinstance(b, Table):
                if b.caption:
                    lines += [f"*{b.caption}*", ""]
                lines.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
                lines.append("|" + "---|" * len(b.header))
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
                lines.append("")
            elif isinstance(b, Image):
                path = f"{asset_dir}/{b.name}.png"
                assets[path] = b.png
                lines += [f"![{b.caption or b.name}]({path})", ""]
                if b.caption:
                    lines += [f"*{b.caption}*", ""]
    return "\n".join(lines), assets


# ---------------------------------------------------------------- HTML

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2.2rem; }
nav a { margin-right: .8rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .88rem; }
th, td { border: 1px solid #ccc; padding: .2rem .5rem; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
caption { caption-side: top; text-align: left; font-style: italic; padding-bottom: .2rem; }
figure { margin: .8rem 0 1.4rem; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .88rem; color: #555; }
pre { background: #f7f7f7; padding: .6rem; overflow-x: auto; font-size: .8rem; max-height: 28rem; }
#report-status { font-size: .8rem; color: #777; }
"""

# Runs first in <head> so that it sees errors from everything after it (image decode errors included).
ERROR_TRAP = """window.reportErrors = [];
window.addEventListener("error", function (e) {
  var t = e.target;
  window.reportErrors.push(t && t.tagName === "IMG" ? "image failed: " + (t.alt || "?") : String(e.message || e.type));
}, true);"""

STATUS_CHECK = """window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var el = document.getElementById("report-status");
  var ok = bad.length === 0 && window.reportErrors.length === 0;
  el.setAttribute("data-status", ok ? "ok" : "error");
  el.setAttribute("data-images", String(imgs.length));
  el.textContent = ok ? "page check: all " + imgs.length + " images decoded, no script errors"
    : "page check: " + bad.length + " of " + imgs.length + " images failed; " + window.reportErrors.join("; ");
});"""


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _html_block(b) -> str:
    if isinstance(b, Text):
        return f"<p>{_inline(b.text)}</p>"
    if isinstance(b, Code):
        return f"<pre>{html.escape(b.text)}</pre>"
    if isinstance(b, Table):
        cap = f"<caption>{_inline(b.caption)}</caption>" if b.caption else ""
        head = "".join(f"<th>{html.escape(fmt(h))}</th>" for h in b.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(c))}</td>" for c in row) + "</tr>" for row in b.rows)
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(b, Image):
        data = base64.b64encode(b.png).decode("ascii")
        cap = f"<figcaption>{_inline(b.caption)}</figcaption>" if b.caption else ""
        alt = html.escape(b.caption or b.name, quote=True)
        return f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">{cap}</figure>'
    raise TypeError(f"unknown block {type(b).__name__}")


def render_html(title: str, sections: list[Section]) -> str:
    nav = " ".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in sections)
    body = "\n".join(
        f'<section id="{s.key}"><h2>{html.escape(s.title)}</h2>\n' + "\n".join(_html_block(b) for b in s.blocks)
        + "</section>" for s in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{CSS}</style>
<script>{ERROR_TRAP}</script></head>
<body><h1>{html.escape(title)}</h1>
<nav>{nav}</nav>
{body}
<p id="report-status" data-status="pending">page check: pending (needs JavaScript)</p>
<script>{STATUS_CHECK}</script>
</body></html>
"""
