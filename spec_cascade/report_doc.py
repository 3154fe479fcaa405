"""The report as a list of blocks, rendered both as Markdown (report.md) and as one
self-contained HTML page (report.html: images inlined as base64 data URIs, styles inline, no
external resource), so the two can never say different things.

Inline text may use `code`, **bold** and _italic_ (the subset the report writes).
"""
from __future__ import annotations

import base64
import dataclasses
import html
import os
import re
from typing import Sequence, Union


@dataclasses.dataclass(frozen=True)
class Heading:
  level: int
  text: str


@dataclasses.dataclass(frozen=True)
class Para:
  text: str


@dataclasses.dataclass(frozen=True)
class Bullets:
  items: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Table:
  header: tuple[str, ...]
  rows: tuple[tuple[str, ...], ...]
  align: str = ""  # one of 'l' / 'r' per column; default: first left, the rest right


@dataclasses.dataclass(frozen=True)
class Image:
  path: str  # relative to the report's folder
  alt: str


@dataclasses.dataclass(frozen=True)
class Details:
  summary: str
  blocks: tuple["Block", ...]


Block = Union[Heading, Para, Bullets, Table, Image, Details]


def _aligns(t: Table) -> str:
  return t.align or "l" + "r" * (len(t.header) - 1)


def _md_cell(text: str) -> str:
  return text.replace("|", "\\|")


def to_markdown(blocks: Sequence[Block]) -> str:
  """GitHub-flavoured Markdown of the blocks."""
  out: list[str] = []
  for b in blocks:
    if isinstance(b, Heading):
      out.append(f"{'#' * b.level} {b.text}\n")
    elif isinstance(b, Para):
      out.append(b.text + "\n")
    elif isinstance(b, Bullets):
      out.append("\n".join(f"- {item}" for item in b.items) + "\n")
    elif isinstance(b, Table):
      sep = ["---:" if a == "r" else "---" for a in _aligns(b)]
      lines = [b.header, sep] + [list(r) for r in b.rows]
      out.append("\n".join("| " + " | ".join(_md_cell(c) for c in line) + " |"
                           for line in lines) + "\n")
    elif isinstance(b, Image):
      out.append(f"![{b.alt}]({b.path})\n")
    elif isinstance(b, Details):
      out.append(f"<details><summary>{html.escape(b.summary)}</summary>\n")
      out.append(to_markdown(b.blocks))
      out.append("</details>\n")
    else:
      raise TypeError(f"not a report block: {b!r}")
  return "\n".join(out)


def _inline(text: str) -> str:
  t = html.escape(text)
  t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
  t = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)
  return re.sub(r"(?<![\w/])_([^_]+)_(?![\w/])", r"<em>\1</em>", t)


_MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg"}


def _html_blocks(blocks: Sequence[Block], base_dir: str) -> list[str]:
  out: list[str] = []
  for b in blocks:
    if isinstance(b, Heading):
      out.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
    elif isinstance(b, Para):
      out.append(f"<p>{_inline(b.text)}</p>")
    elif isinstance(b, Bullets):
      out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
    elif isinstance(b, Table):
      al = _aligns(b)
      cell = lambda tag, i, c: f'<{tag} class="{al[i]}">{_inline(c)}</{tag}>'
      head = "".join(cell("th", i, c) for i, c in enumerate(b.header))
      body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(r)) + "</tr>"
                     for r in b.rows)
      out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    elif isinstance(b, Image):
      ext = os.path.splitext(b.path)[1].lower()
      with open(os.path.join(base_dir, b.path), "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
      out.append(f'<figure><img alt="{html.escape(b.alt)}" '
                 f'src="data:{_MIME.get(ext, "application/octet-stream")};base64,{data}">'
                 f"<figcaption>{_inline(b.alt)}</figcaption></figure>")
    elif isinstance(b, Details):
      out.append(f"<details><summary>{_inline(b.summary)}</summary>"
                 + "".join(_html_blocks(b.blocks, base_dir)) + "</details>")
    else:
      raise TypeError(f"not a report block: {b!r}")
  return out


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em}td.r,th.r{text-align:right}
td.l,th.l{text-align:left}img{max-width:100%}figure{margin:1em 0}
figcaption{font-size:.8em;color:#555}code{background:#f3f3f3;padding:0 .2em}"""


def to_html(blocks: Sequence[Block], base_dir: str, title: str) -> str:
  """One self-contained HTML page of the blocks; images are read from `base_dir` and inlined."""
  body = "\n".join(_html_blocks(blocks, base_dir))
  return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
          f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
          f"<body>\n{body}\n</body></html>\n")
