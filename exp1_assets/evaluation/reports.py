"""Writers for evaluation reports and sample sets: JSON (the numbers), Markdown, standalone HTML.

Model output is untrusted text: it can contain `<script>`, Markdown pipes or `{`/`}`. So HTML is
assembled by concatenation with `html.escape` (never `str.format` on a template: the research
script crashed on its own CSS braces), and Markdown cells go through `md_escape`
(exp1_assets/markdown.py, shared with the Dagster metadata).
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from exp1_assets.markdown import format_cell, md_escape, md_table


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
def json_safe(value: Any) -> Any:
    """NaN/inf become null: they are not JSON and break strict readers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_text(path: Path, text: str) -> None:
    """Write via a temp file + rename, so a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(json_safe(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(json_safe(r), ensure_ascii=False, allow_nan=False) + "\n" for r in rows))


# ---------------------------------------------------------------------------------------------
# Evaluation report
# ---------------------------------------------------------------------------------------------
def worst_and_best_rows(predictions: Sequence[Mapping[str, Any]], k: int) -> str:
    """Markdown table of the k lowest and k highest ROUGE-L rows (prompt, reference, prediction)."""
    ranked = sorted(range(len(predictions)), key=lambda i: (predictions[i]["rouge_l"], i))
    picks = [("worst", i) for i in ranked[:k]]
    picks += [("best", i) for i in reversed(ranked[-k:]) if i not in ranked[:k]]
    rows = [[kind, f"{predictions[i]['rouge_l']:.3f}", f"{predictions[i]['bleu']:.1f}",
             md_escape(predictions[i]["prompt"], limit=120), md_escape(predictions[i]["reference"], limit=160),
             md_escape(predictions[i]["prediction"], limit=160)] for kind, i in picks]
    return md_table(["", "ROUGE-L", "BLEU", "prompt", "reference", "prediction"], rows)


def format_with_interval(value: Any, interval: Mapping[str, Any] | None, *, confidence: float) -> str:
    """A headline number as "value (95% CI low–high)", 4 significant digits; just the value without an interval.

    >>> format_with_interval(2.43127, {"low": 2.38, "high": 2.4901}, confidence=0.95)
    '2.431 (95% CI 2.38–2.49)'
    >>> format_with_interval(0.5, {"low": None, "high": None}, confidence=0.95)
    '0.5'
    """
    if not _finite(value):
        return "n/a"
    text = f"{value:.4g}"
    low, high = (interval or {}).get("low"), (interval or {}).get("high")
    if _finite(low) and _finite(high):
        text += f" ({confidence * 100:g}% CI {low:.4g}–{high:.4g})"
    return text


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _interval_cell(entry: Mapping[str, Any]) -> str:
    low, high = entry.get("low"), entry.get("high")
    return f"{low:.4g}–{high:.4g}" if _finite(low) and _finite(high) else "n/a"


def evaluation_markdown(report: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]], *, k: int = 5) -> str:
    headline = report["metrics"]
    parts = [f"# Evaluation: {md_escape(str(report.get('checkpoint', '')))}", ""]
    intervals, bootstrap = report.get("intervals") or {}, report.get("bootstrap") or {}
    if intervals:  # the headline numbers with their error bars, before the full table
        confidence = bootstrap.get("confidence", 0.95)
        values = {**headline, **{f"exact_accuracy/{task}": entry["accuracy"]
                                 for task, entry in (report.get("exact_accuracy") or {}).items()}}
        parts += [f"## Headline numbers ({confidence * 100:g}% bootstrap CI, {bootstrap.get('resamples')} resamples, "
                  f"seed {bootstrap.get('seed')}; perplexity resamples validation blocks, the rest test rows)", "",
                  md_table(["metric", "value"], [[md_escape(name), format_with_interval(
                      values.get(name), interval, confidence=confidence)] for name, interval in intervals.items()]), ""]
    parts += ["## All numbers", "", md_table(["metric", "value"], [[f"`{n}`", v] for n, v in headline.items()
                                                                   if isinstance(v, (int, float))]), ""]
    checks = report.get("checks") or {}
    if checks:  # the bars this report was judged by (report["thresholds"]), next to the values
        parts += ["## The research plan's bars", "",
                  "`passed` judges the point estimate; `interval clears` says whether the whole interval is on the "
                  "passing side of the bar.", "",
                  md_table(["check", "value", "CI", "threshold", "passed", "interval clears"],
                           [[f"`{name}`", c["value"], _interval_cell(c), c["threshold"], "yes" if c["passed"] else "no",
                             "yes" if c.get("interval_clears") else "no"] for name, c in checks.items()]), ""]
    if report.get("bleu_signature"):
        parts += [f"BLEU signature: `{report['bleu_signature']}`  ", f"chrF signature: `{report.get('chrf_signature', '')}`", ""]
    for title, key in (("Exact-answer accuracy by task (answer contained, whole words)", "exact_accuracy"),
                       ("Probe accuracy by category", "probe_accuracy")):
        table = report.get(key) or {}
        if table:
            ci = ["CI"] if any("low" in v for v in table.values()) else []  # probes have no intervals
            parts += [f"## {title}", "", md_table(["task", "accuracy", *ci, "correct", "total"],
                      [[md_escape(t), v["accuracy"], *[_interval_cell(v) for _ in ci], v["correct"], v["total"]]
                       for t, v in table.items()]), ""]
    if predictions:
        parts += ["## Worst and best rows (ROUGE-L)", "", worst_and_best_rows(predictions, k), ""]
    return "\n".join(parts)


def write_evaluation_report(
    out_dir: str | Path, *, report: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]]
) -> dict[str, Path]:
    """report.json, predictions.jsonl, report.md into `out_dir`."""
    out = Path(out_dir)
    paths = {"report_json": out / "report.json", "predictions": out / "predictions.jsonl", "report_md": out / "report.md"}
    write_json(paths["report_json"], report)
    write_jsonl(paths["predictions"], predictions)
    write_text(paths["report_md"], evaluation_markdown(report, predictions))
    return paths


# ---------------------------------------------------------------------------------------------
# Sample sets
# ---------------------------------------------------------------------------------------------
ANALYSIS_COLUMNS = ("category", "n", "words_mean", "chars_mean", "code_block", "bullet_list", "numbers",
                    "ends_with_punctuation", "repetitive", "stopped")


def analysis_markdown(analysis: Sequence[Mapping[str, Any]]) -> str:
    return md_table(ANALYSIS_COLUMNS, [[md_escape(str(r[c])) if c == "category" else r[c] for c in ANALYSIS_COLUMNS]
                                       for r in analysis])


def samples_preview_markdown(samples: Sequence[Mapping[str, Any]], *, n: int = 6, limit: int = 300) -> str:
    """A few samples, one per category first, as a Markdown list (model text escaped)."""
    seen, picks = set(), []
    for s in samples:
        if s["category"] not in seen:
            seen.add(s["category"])
            picks.append(s)
    picks = (picks + [s for s in samples if s not in picks])[:n]
    return "\n".join(f"- **{md_escape(s['category'])}** (T={s['temperature']}): {md_escape(s['prompt'], limit=100)}"
                     f"  \n  → {md_escape(s['text'], limit=limit)}" for s in picks)


def samples_markdown(samples: Sequence[Mapping[str, Any]], analysis: Sequence[Mapping[str, Any]]) -> str:
    parts = ["# Samples", "", "## Analysis", "", analysis_markdown(analysis), ""]
    for s in samples:
        parts += [f"### {md_escape(s['category'])} · T={s['temperature']} · variation {s['variation']}", "",
                  f"**Prompt:** {md_escape(s['prompt'])}", "",
                  # A fenced block keeps the model's own Markdown inert; a longer fence than any inside.
                  "`" * max(4, _longest_backtick_run(s["text"]) + 1), s["text"],
                  "`" * max(4, _longest_backtick_run(s["text"]) + 1), ""]
    return "\n".join(parts)


def _longest_backtick_run(text: str) -> int:
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    return longest


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #222; }
table { border-collapse: collapse; margin-bottom: 2rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; }
.sample { border: 1px solid #ddd; border-radius: 6px; padding: 0.8rem; margin: 1rem 0; }
.meta { color: #666; font-size: 0.85rem; }
pre { white-space: pre-wrap; background: #f6f6f6; padding: 0.6rem; }
"""


def samples_html(samples: Sequence[Mapping[str, Any]], analysis: Sequence[Mapping[str, Any]], *, title: str) -> str:
    """A standalone page. Every dynamic string passes html.escape; the CSS is never formatted."""
    esc = html.escape
    head_cells = "".join("<th>" + esc(c) + "</th>" for c in ANALYSIS_COLUMNS)
    body_rows = "".join("<tr>" + "".join("<td>" + esc(format_cell(r[c])) + "</td>" for c in ANALYSIS_COLUMNS) + "</tr>"
                        for r in analysis)
    cards = []
    for s in samples:
        meta = (f"{s['category']} · T={s['temperature']} · variation {s['variation']} · "
                f"{s['n_tokens']} tokens · {'stopped' if s['stopped'] else 'hit max_new_tokens'}")
        cards.append('<div class="sample"><div class="meta">' + esc(meta) + "</div><p><b>Prompt:</b> "
                     + esc(s["prompt"]) + "</p><pre>" + esc(s["text"]) + "</pre></div>")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + esc(title) + "</title><style>"
            + _CSS + "</style></head><body><h1>" + esc(title) + "</h1><h2>Analysis</h2><table><tr>" + head_cells
            + "</tr>" + body_rows + "</table><h2>Samples</h2>" + "".join(cards) + "</body></html>\n")


def write_samples(
    out_dir: str | Path, *, samples: Sequence[Mapping[str, Any]], analysis: Sequence[Mapping[str, Any]], title: str
) -> dict[str, Path]:
    """samples.jsonl, samples.md, samples.html into `out_dir`."""
    out = Path(out_dir)
    paths = {"jsonl": out / "samples.jsonl", "md": out / "samples.md", "html": out / "samples.html"}
    write_jsonl(paths["jsonl"], samples)
    write_text(paths["md"], samples_markdown(samples, analysis))
    write_text(paths["html"], samples_html(samples, analysis, title=title))
    return paths
