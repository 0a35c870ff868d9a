"""``reports/index.html``: ``tables.md`` as one self-contained page, its pictures by relative path, nothing
fetched, no scripts, so it opens offline."""

from __future__ import annotations

import html
import re

PAGE_STYLE = (
    "body{font-family:sans-serif;line-height:1.4;margin:1.5em auto;padding:0 1em;max-width:110em}"
    "table{border-collapse:collapse;font-size:.9em}th,td{border:1px solid #bbb;padding:.2em .5em;"
    "vertical-align:top}th{background:#eee;text-align:left}.table{overflow-x:auto;margin:.5em 0}"
    "code{background:#f3f3f3;padding:0 .2em}img{max-width:100%;vertical-align:top;margin:.2em}"
    'img[src*="confusion/"]{width:30em}'  # side by side
)
_CODE = re.compile(r"`([^`]*)`")
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![*\w])\*(?![\s*])(.+?)(?<![\s*])\*(?![*\w])")


def _inline(text: str) -> str:
    """Code spans, images, bold and italic; everything else escaped."""
    out = []
    for i, part in enumerate(_CODE.split(text)):  # odd parts are code
        if i % 2:
            out.append(f"<code>{html.escape(part)}</code>")
            continue
        part = _IMAGE.sub(lambda m: f'<img src="{m[2]}" alt="{m[1]}">', html.escape(part))
        out.append(_ITALIC.sub(r"<em>\1</em>", _BOLD.sub(r"<strong>\1</strong>", part)))
    return "".join(out)


def md_row(cells: list[str]) -> str:
    """One Markdown table row; a ``|`` inside a cell (a method's label may hold one) is escaped, so it never
    starts a column of its own."""
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _cells(line: str) -> list[str]:
    inner = line.strip().removeprefix("|")
    if inner.endswith("|") and not inner.endswith("\\|"):
        inner = inner[:-1]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def _block(kind: str, lines: list[str]) -> str:
    if kind == "heading":
        level = len(lines[0]) - len(lines[0].lstrip("#"))
        return f"<h{level}>{_inline(lines[0][level:].strip())}</h{level}>"
    if kind == "list":
        return "<ul>\n" + "\n".join(f"<li>{_inline(x[2:])}</li>" for x in lines) + "\n</ul>"
    if kind == "table":
        rows = [c for c in map(_cells, lines) if not all(re.fullmatch(r":?-{3,}:?", x) for x in c)]  # no |---|
        head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0])
        body = "\n".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
        return f'<div class="table"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table></div>'
    return "<p>" + " ".join(_inline(x) for x in lines) + "</p>"


def _kind(line: str) -> str:
    if line.startswith("#"):
        return "heading"
    return "table" if line.startswith("|") else "list" if line.startswith("- ") else "paragraph"


def markdown_to_html(md: str) -> str:
    """The markdown tables.md uses (headings, paragraphs, bullet lists, pipe tables, bold, italic, code, images)
    as one self-contained page: no scripts, no fetched styles or fonts; images by their relative paths."""
    lines, blocks, i = md.split("\n"), [], 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        kind, j = _kind(lines[i]), i + 1
        while kind != "heading" and j < len(lines) and lines[j].strip() and _kind(lines[j]) == kind:
            j += 1
        blocks.append(_block(kind, lines[i:j]))
        i = j
    title = next((x.lstrip("#").strip() for x in lines if x.startswith("# ")), "Report")
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
        f"<style>{PAGE_STYLE}</style>\n</head>\n<body>\n" + "\n".join(blocks) + "\n</body>\n</html>\n"
    )
