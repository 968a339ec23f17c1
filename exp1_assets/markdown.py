"""Markdown for reports and for Dagster's metadata panel: escaped cells, tables, inline PNGs.

Model output and raw data are untrusted text: they can hold pipes, HTML or Markdown markup, so
text cells go through `md_escape` (one line, inert). Images travel inline as base64 data URIs,
because the Dagster UI renders metadata Markdown without access to the artifact store.

Plain Python, no heavy imports: the Dagster code server imports this module.

>>> md_escape("a|b <i>*x*</i>\\nnext")
'a\\\\|b &lt;i&gt;\\\\*x\\\\*&lt;/i&gt; ⏎ next'
>>> md_table(["a", "b"], [[1, 0.5]])
'| a | b |\\n| --- | --- |\\n| 1 | 0.5000 |'
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_MD_SPECIAL = "\\`*_[]#|"


def md_escape(text: str, *, limit: int | None = None) -> str:
    """One-line, Markdown-inert text for a table cell or preview (cut to `limit` chars + "…")."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    text = "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in text)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("\r\n", "\n").replace("\n", " ⏎ ")


def format_cell(value: Any) -> str:
    """A number or flag as a table shows it: 4 decimals, whole counts with separators, NaN as n/a.

    >>> [format_cell(v) for v in (True, float("nan"), 1234.0, 0.25, 7, None)]
    ['yes', 'n/a', '1,234', '0.2500', '7', '']
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value.is_integer() and abs(value) >= 1000:
            return f"{int(value):,}"  # counts (parameters, tokens) read better whole
        return f"{value:.4f}"
    return str(value)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; cells are formatted (`format_cell`), not escaped (escape text cells before)."""
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(format_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def md_records_table(records: Sequence[Mapping[str, Any]]) -> str:
    """`md_table` of dicts: columns are the keys in first-seen order, text cells escaped.

    A record without a column gets an empty cell; no records gives "(empty)".

    >>> print(md_records_table([{"split": "a|b", "n": 2}, {"split": "c", "mean": 0.5}]))
    | split | n | mean |
    | --- | --- | --- |
    | a\\|b | 2 |  |
    | c |  | 0.5000 |
    >>> md_records_table([])
    '(empty)'
    """
    if not records:
        return "(empty)"
    columns = list(dict.fromkeys(key for record in records for key in record))
    rows = [[md_escape(value) if isinstance(value, str) else value for value in (r.get(c) for c in columns)]
            for r in records]
    return md_table([md_escape(str(c)) for c in columns], rows)


def png_markdown(path: str | Path, *, alt: str) -> str:
    """The PNG at `path` as a Markdown image with an inline base64 data URI.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "x.png"; _ = p.write_bytes(b"\\x89PNG")
    >>> png_markdown(p, alt="plot")
    '![plot](data:image/png;base64,iVBORw==)'
    """
    encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"![{alt}](data:image/png;base64,{encoded})"
