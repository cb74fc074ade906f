"""One self-contained HTML page: tables, sanity flags, plots (PNG embedded as base64), diffs."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from clipprobe.report.sanity import SanityFlag

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1500px}
h1{font-size:1.4em}h2{border-bottom:1px solid #ccc;margin-top:1.6em}h3{margin:1em 0 .3em}h4{margin:.3em 0}
.concepts{display:flex;flex-wrap:wrap;gap:1.5em}
table{border-collapse:collapse;font-size:12px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ddd;padding:2px 6px;text-align:right}thead th{background:#f3f3f3}
tbody th{text-align:left;font-weight:normal}
.size{font-size:11px;color:#555;margin:.2em 0 0}
.flags li{margin:.2em 0}.flag-kind{font-family:monospace;background:#fff3cd;padding:0 4px}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
tr.significant td{background:#fde2e2}
"""


def embed_png(path: str | Path, alt: str) -> str:
    """An ``<img>`` whose source is the PNG itself (base64), so the page needs no other file."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def flags_html(flags: Sequence[SanityFlag]) -> str:
    if not flags:
        return '<p class="flags">No sanity flag raised.</p>'
    items = "".join(f'<li><span class="flag-kind">{html.escape(f.kind)}</span> {html.escape(f.message)}</li>'
                    for f in flags)
    return f'<ul class="flags">{items}</ul>'


def render_page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """A whole HTML document: ``sections`` are (heading, HTML fragment) pairs, in order."""
    body = "\n".join(f'<section><h2>{html.escape(h)}</h2>\n{frag}\n</section>' for h, frag in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
            f"<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")
