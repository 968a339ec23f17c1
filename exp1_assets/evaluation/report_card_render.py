"""The report cards as pages: one list of sections, written out as Markdown or as standalone HTML.

Both formats come from the same sections, so the Markdown and the HTML card cannot disagree.
Text that comes from data (task names, size names, notes) is `Untrusted`: Markdown escapes it
(`md_escape`), HTML escapes every string (`html.escape`, by concatenation: never `str.format` on a
template, the CSS has braces). The card's own words stay readable in the Markdown source.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from exp1_assets.evaluation.report_card_model import (
    NOT_MEASURED, ROLE_WORDS, ComparisonCard, Measure, SizeCard, duration, percent, percent_range,
)
from exp1_assets.markdown import md_escape


class Untrusted(str):
    """Text from data or a model: escaped in Markdown as well as in HTML."""


@dataclass(frozen=True)
class Link:
    """A link cell; `href` None means the target does not exist yet."""

    label: str
    href: str | None
    html_href: str | None = None
    """Where the HTML page links instead (a card links the other cards in its own format)."""


Cell = str | Link


@dataclass(frozen=True)
class Section:
    """A heading, paragraphs, and an optional table."""

    title: str
    paragraphs: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    rows: tuple[tuple[Cell, ...], ...] = ()


# ---------------------------------------------------------------------------------------------
# What a card shows
# ---------------------------------------------------------------------------------------------
def count(value: float | None) -> str:
    """A count with separators, and in millions when large.

    >>> [count(v) for v in (5182976.0, 120.0, None)]
    ['5,182,976 (5.18 M)', '120', 'not measured']
    """
    if value is None:
        return NOT_MEASURED
    return f"{int(value):,} ({value / 1e6:.2f} M)" if value >= 1e5 else f"{int(value):,}"


def size_sections(card: SizeCard) -> list[Section]:
    model = Section("Model", headers=("model", ""), rows=(
        ("size", Untrusted(card.size)),
        ("role", Untrusted(f"{card.role}: {ROLE_WORDS.get(card.role, 'no description')}") if card.role
         else NOT_MEASURED),
        ("parameters", count(card.parameters)),
        ("tokens trained", count(card.tokens_trained)),
        ("wall time", duration(card.wall_time_s) if card.wall_time_s is not None else NOT_MEASURED),
        ("final validation loss", f"{card.final_val_loss:.4f}" if card.final_val_loss is not None else NOT_MEASURED),
    ), paragraphs=(Untrusted(card.note),) if card.note else ())
    statuses = {"clears": ("yes", "yes"), "point_only": ("yes", "no: the interval crosses the bar"),
                "met_without_interval": ("yes", "no interval measured"), "misses": ("no", "no"),
                "not_measured": (NOT_MEASURED, NOT_MEASURED)}
    bars = Section(
        f"{card.bar_owner.capitalize()} bars",
        headers=("metric", "value", card.ci, "bar", "met (point estimate)", "met by the whole interval"),
        rows=tuple((b.measure.label, _value(b.measure), _interval(b.measure), f"{b.operator} {b.threshold:g}",
                    *statuses[b.status]) for b in card.bars),
        paragraphs=(card.intervals_from + ".",) if card.intervals_from else ())
    quality = Section("Quality of greedy answers and perplexity", headers=("metric", "value", card.ci),
                      rows=tuple((m.label, _value(m), _interval(m)) for m in card.metrics))
    exact = Section(
        "Exact answers by task (answer contained, whole words)",
        headers=("task", "accuracy", card.ci, "correct", "total"),
        rows=tuple((Untrusted(a.task), _percent(a.accuracy), _percent_interval(a.low, a.high), _int(a.correct),
                    _int(a.total)) for a in card.exact),
        paragraphs=() if card.exact else (f"Exact answers {NOT_MEASURED}.",))
    probes = Section(
        "Probes by category", headers=("category", "accuracy", "correct", "total"),
        rows=tuple((Untrusted(a.task), _percent(a.accuracy), _int(a.correct), _int(a.total)) for a in card.probes),
        paragraphs=() if card.probes else (f"Probes {NOT_MEASURED}.",))
    links = Section("Artifacts", headers=("artifact", "file"),
                    rows=tuple((label, Link(href or "not generated yet", href)) for label, href in card.links))
    return [model, bars, quality, exact, probes, _benchmark_section(card)] + ([links] if card.links else [])


def _benchmark_section(card: SizeCard) -> Section:
    if card.benchmarks is None:
        return Section("Benchmarks", paragraphs=(f"Benchmarks {NOT_MEASURED}: no benchmark report for this size.",))
    return Section(
        "Benchmarks", headers=("task", "metric", "value ± stderr", "chance", "above chance by 2 stderr", "samples"),
        rows=tuple((Untrusted(b.task), Untrusted(b.metric), _plus_minus(b.value, b.stderr),
                    f"{b.chance:.3f}" if b.chance is not None else "no chance level",
                    {True: "yes", False: "no", None: "unknown"}[b.above_chance], _int(b.samples))
                   for b in card.benchmarks),
        paragraphs=() if card.benchmarks else (f"Benchmarks {NOT_MEASURED}: the report has no tasks.",))


def comparison_sections(card: ComparisonCard) -> list[Section]:
    dirs = dict(card.card_dirs)
    rows = []
    for c in card.cards:
        by_metric = {b.measure.label: b.measure for b in c.bars}
        overall = c.exact[0] if c.exact and c.exact[0].task == "all" else None
        above = (f"{sum(bool(b.above_chance) for b in c.benchmarks)} of {len(c.benchmarks)}"
                 if c.benchmarks else NOT_MEASURED)
        name = (Link(c.size, f"{dirs[c.size]}/card.md", html_href=f"{dirs[c.size]}/card.html")
                if c.size in dirs else Untrusted(c.size))
        rows.append((name, Untrusted(c.role or NOT_MEASURED), count(c.parameters),
                     *(by_metric[label].text(ci=c.ci) if label in by_metric else NOT_MEASURED
                       for label in ("perplexity", "ROUGE-L")),
                     overall.text() if overall else NOT_MEASURED, above, c.verdict))
    table = Section("Sizes", headers=("size", "role", "parameters", "perplexity", "ROUGE-L", "exact answers",
                                      "benchmarks above chance", "verdict"),
                    rows=tuple(rows), paragraphs=() if rows else ("No size has a card yet.",))
    scaling = Section("Scaling", paragraphs=(card.scaling,),
                      headers=("size", "observed loss", "fitted loss", "residual"),
                      rows=tuple((Untrusted(size), *(_loss(v) for v in values)) for size, *values in card.residuals))
    return [table, scaling]


def _loss(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else NOT_MEASURED


def _value(m: Measure) -> str:
    return f"{m.value:.{m.digits}f}" if m.value is not None else NOT_MEASURED


def _interval(m: Measure) -> str:
    return f"{m.low:.{m.digits}f}–{m.high:.{m.digits}f}" if m.has_interval else NOT_MEASURED


def _percent(share: float | None) -> str:
    return percent(share) if share is not None else NOT_MEASURED


def _percent_interval(low: float | None, high: float | None) -> str:
    return percent_range(low, high) if low is not None and high is not None else NOT_MEASURED


def _plus_minus(value: float | None, stderr: float | None) -> str:
    if value is None:
        return NOT_MEASURED
    return f"{value:.3f} ± {stderr:.3f}" if stderr is not None else f"{value:.3f} (no stderr)"


def _int(value: int | None) -> str:
    return f"{value:,}" if value is not None else ""


def _page(card: SizeCard | ComparisonCard) -> tuple[str, list[Section]]:
    if isinstance(card, SizeCard):
        return f"Report card: {card.size}", size_sections(card)
    return "Report card: all sizes", comparison_sections(card)


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------
def _md(cell: Cell) -> str:
    if isinstance(cell, Link):
        return f"[{md_escape(cell.label)}]({cell.href})" if cell.href else md_escape(cell.label)
    return md_escape(cell) if isinstance(cell, Untrusted) else cell


def markdown_page(card: SizeCard | ComparisonCard) -> str:
    title, sections = _page(card)
    parts = [f"# {md_escape(title)}", "", f"**Verdict:** {card.verdict}", ""]
    for section in sections:
        parts += [f"## {section.title}", ""]
        for paragraph in section.paragraphs:
            parts += [_md(paragraph), ""]
        if section.rows:
            parts += [_md_table(section.headers, section.rows), ""]
    return "\n".join(parts)


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    # Cells are already text (numbers formatted with their own digits), so not `md_table`'s format_cell.
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    return "\n".join(lines + ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows])


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 64rem; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
.verdict { font-size: 1.1rem; background: #f3f6fb; border-left: 4px solid #3467c0; padding: 0.7rem 1rem; }
"""


def _html(cell: Cell) -> str:
    esc = html.escape
    if isinstance(cell, Link):
        href = cell.html_href or cell.href
        return '<a href="' + esc(href) + '">' + esc(cell.label) + "</a>" if href else esc(cell.label)
    return esc(cell)


def html_page(card: SizeCard | ComparisonCard) -> str:
    """A standalone page. Every string passes html.escape; the CSS is never formatted."""
    esc = html.escape
    title, sections = _page(card)
    body = ['<p class="verdict"><b>Verdict:</b> ' + esc(card.verdict) + "</p>"]
    for section in sections:
        body.append("<h2>" + esc(section.title) + "</h2>")
        body += ["<p>" + _html(p) + "</p>" for p in section.paragraphs]
        if section.rows:
            body.append("<table><tr>" + "".join("<th>" + esc(h) + "</th>" for h in section.headers) + "</tr>"
                        + "".join("<tr>" + "".join("<td>" + _html(c) + "</td>" for c in row) + "</tr>"
                                  for row in section.rows) + "</table>")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + esc(title) + "</title><style>"
            + _CSS + "</style></head><body><h1>" + esc(title) + "</h1>" + "".join(body) + "</body></html>\n")
