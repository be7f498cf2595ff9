"""A self-contained HTML report page: text sections, tables and embedded figures.

The page loads nothing from the network or the file system: CSS is inline and every
figure is embedded as a ``data:image/png;base64,...`` URI, so the single file can be
mailed or archived as is. Section text is a small Markdown subset (see
:func:`markdown_to_html`); all text is HTML-escaped before any markup is applied.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; line-height: 1.45; color: #222; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #eee; padding-bottom: .15em; margin-top: 1.8em; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px;
       font-family: ui-monospace, Menlo, Consolas, monospace; font-size: .92em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #bbb; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.center, th.center { text-align: center; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .92em; color: #444; margin-top: .3em; }
.missing { color: #a00; font-style: italic; }
nav ol { margin-top: .3em; }
"""

_NUM_RE = re.compile(
    r"^[+\-−±]?\s*(\d[\d,_]*(\.\d*)?|\.\d+)([eE][+\-]?\d+)?\s*(%|x|×)?"
    r"(\s*(±|&plusmn;|\+/-)\s*\d[\d,_]*(\.\d*)?([eE][+\-]?\d+)?\s*%?)?$"
)
_SEP_CELL_RE = re.compile(r"^:?-{1,}:?$")
_HEADING_RE = re.compile(r"^(#{1,6})\s+(.*)$")
_BULLET_RE = re.compile(r"^\s*[-*]\s+(.*)$")


def _inline(text: str) -> str:
    """Inline markup on already-escaped text: `code`, then **bold** outside code spans."""
    parts = re.split(r"(`[^`]+`)", text)
    out = []
    for part in parts:
        if len(part) >= 2 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{part[1:-1]}</code>")
        else:
            out.append(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", part))
    return "".join(out)


def _split_row(line: str) -> list[str]:
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|") and not s.endswith("\\|"):
        s = s[:-1]
    cells = re.split(r"(?<!\\)\|", s)
    return [c.strip().replace("\\|", "|") for c in cells]


def _is_separator(line: str) -> bool:
    if "-" not in line:
        return False
    cells = _split_row(line)
    return bool(cells) and all(_SEP_CELL_RE.match(c.replace(" ", "")) for c in cells)


def _align(sep: str) -> str:
    sep = sep.replace(" ", "")
    if sep.startswith(":") and sep.endswith(":"):
        return "center"
    if sep.endswith(":"):
        return "num"
    return ""


def _is_number(cell: str) -> bool:
    return bool(_NUM_RE.match(html.unescape(cell).strip()))


def _table(lines: list[str]) -> str:
    header = _split_row(lines[0])
    aligns = [_align(c) for c in _split_row(lines[1])]
    body = [_split_row(line) for line in lines[2:]]
    ncols = len(header)

    def cls(i: int, cell: str | None = None) -> str:
        a = aligns[i] if i < len(aligns) else ""
        if not a and cell is not None and _is_number(cell):
            a = "num"
        return f' class="{a}"' if a else ""

    # a column whose body cells are all numbers gets a right-aligned header too
    numeric_col = [
        bool(body) and all(i >= len(r) or not r[i] or _is_number(r[i]) for r in body)
        for i in range(ncols)
    ]
    out = ["<table>", "<thead><tr>"]
    for i, h in enumerate(header):
        c = cls(i) or (' class="num"' if numeric_col[i] else "")
        out.append(f"<th{c}>{_inline(h)}</th>")
    out.append("</tr></thead>")
    out.append("<tbody>")
    for row in body:
        row = (row + [""] * ncols)[:ncols]
        out.append(
            "<tr>"
            + "".join(f"<td{cls(i, c)}>{_inline(c)}</td>" for i, c in enumerate(row))
            + "</tr>"
        )
    out.append("</tbody></table>")
    return "\n".join(out)


def markdown_to_html(md: str, *, heading_offset: int = 0) -> str:
    """A small Markdown subset to HTML: paragraphs, ``#``/``##`` headings, ``- `` bullet
    lists, inline `code`, **bold**, a paragraph in ``_underscores_`` (italic) and GitHub
    pipe tables (header, ``|---|``, rows).

    All text is escaped with :func:`html.escape` first, so markup in the input (e.g. a
    ``<script>`` tag) shows as text. ``heading_offset`` shifts heading levels (``# `` becomes
    ``<h{1 + offset}>``, capped at ``<h6>``).
    """
    lines = html.escape(md, quote=True).replace("\r\n", "\n").split("\n")
    out: list[str] = []
    para: list[str] = []
    items: list[str] = []

    def flush() -> None:
        if para:
            text = " ".join(p.strip() for p in para)
            if len(text) > 2 and text.startswith("_") and text.endswith("_"):
                # a whole paragraph in _underscores_: a table's note, in italics
                out.append('<p class="note"><em>' + _inline(text[1:-1]) + "</em></p>")
            else:
                out.append("<p>" + _inline(text) + "</p>")
            para.clear()
        if items:
            out.append("<ul>\n" + "\n".join(f"<li>{_inline(i)}</li>" for i in items) + "\n</ul>")
            items.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            flush()
            i += 1
            continue
        if stripped.startswith("|") and i + 1 < len(lines) and _is_separator(lines[i + 1]):
            flush()
            block = [stripped, lines[i + 1].strip()]
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                block.append(lines[i].strip())
                i += 1
            out.append(_table(block))
            continue
        m = _HEADING_RE.match(stripped)
        if m:
            flush()
            level = min(6, len(m.group(1)) + heading_offset)
            out.append(f"<h{level}>{_inline(m.group(2).strip())}</h{level}>")
            i += 1
            continue
        b = _BULLET_RE.match(line)
        if b:
            if para:
                flush()
            items.append(b.group(1).strip())
            i += 1
            continue
        if items and line.startswith(("  ", "\t")):
            items[-1] += " " + stripped  # continuation of a bullet
            i += 1
            continue
        if items:
            flush()
        para.append(stripped)
        i += 1
    flush()
    return "\n".join(out)


def _slug(text: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    slug, n = base, 2
    while slug in used:
        slug, n = f"{base}-{n}", n + 1
    used.add(slug)
    return slug


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def write_html(
    path: Path,
    *,
    title: str,
    sections: list[tuple[str, str]],
    figures: list[tuple[str, Path]],
    notes: list[str] | None = None,
) -> Path:
    """Write one self-contained HTML page and return its path.

    ``sections`` are (heading, Markdown text) pairs; ``figures`` are (caption, PNG path)
    pairs, embedded as base64 with the caption underneath and listed in an index of
    figures at the top. A figure whose file is missing is listed with a note instead.
    """
    used: set[str] = {"figures", "notes"}
    esc_title = html.escape(title)
    body: list[str] = [f"<h1>{esc_title}</h1>"]

    fig_ids = [f"fig-{i}" for i in range(1, len(figures) + 1)]
    used.update(fig_ids)
    if figures:
        body.append('<nav aria-label="index of figures"><strong>Figures</strong><ol>')
        for fid, (caption, _) in zip(fig_ids, figures, strict=True):
            body.append(f'<li><a href="#{fid}">{_inline(html.escape(caption))}</a></li>')
        body.append("</ol></nav>")

    for heading, text in sections:
        sid = _slug(heading, used)
        body.append(f'<section id="{sid}">')
        body.append(f"<h2>{_inline(html.escape(heading))}</h2>")
        body.append(markdown_to_html(text, heading_offset=2))
        body.append("</section>")

    if figures:
        body.append('<section id="figures"><h2>Figures</h2>')
        for n, (fid, (caption, png)) in enumerate(zip(fig_ids, figures, strict=True), start=1):
            cap = f"Figure {n}. {_inline(html.escape(caption))}"
            if png is None or not Path(png).is_file():
                body.append(
                    f'<figure id="{fid}"><p class="missing">figure not available</p>'
                    f"<figcaption>{cap}</figcaption></figure>"
                )
                continue
            alt = html.escape(caption, quote=True)
            body.append(
                f'<figure id="{fid}"><img alt="{alt}" src="{_data_uri(Path(png))}">'
                f"<figcaption>{cap}</figcaption></figure>"
            )
        body.append("</section>")

    if notes:
        body.append('<section id="notes"><h2>Notes</h2><ul>')
        body.extend(f"<li>{_inline(html.escape(note))}</li>" for note in notes)
        body.append("</ul></section>")

    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc_title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
