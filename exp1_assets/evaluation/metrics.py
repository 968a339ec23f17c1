"""Evaluation metrics: perplexity over packed blocks, overlap scores, diversity, exact answers.

Scales: ROUGE, distinct-n and accuracies are in [0, 1]; BLEU, chrF and self-BLEU keep sacrebleu's
0-100 scale (the number papers quote). Never `evaluate.load(...)`: it fetches scripts from the Hub
and fails offline; `rouge_score` and `sacrebleu` work directly.

>>> perplexity(0.0, 10)
1.0
>>> round(bits_per_byte(math.log(2) * 8, 8), 6)
1.0
>>> distinct_n(["a b a b"], n=1)
0.5
>>> normalize_answer("  The Answer:  42. ")
'the answer: 42'
"""

from __future__ import annotations

import math
import random
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exp1_assets.data.blocks import BLOCK_COLUMNS, IGNORE_INDEX, block_column, collate_blocks


# ---------------------------------------------------------------------------------------------
# Perplexity over packed blocks
# ---------------------------------------------------------------------------------------------
def token_nll_sums(
    model: Any, blocks: Any, *, batch_size: int, device: str, pad_token_id: int
) -> dict[str, Any]:
    """Summed next-token NLL (nats) and token counts over packed blocks, in total and per block.

    `blocks` is anything indexable whose rows follow the packed-block contract (data/blocks.py:
    `input_ids`, `labels`, `position_ids`): a `datasets.Dataset` or a list of dicts. Two
    populations of target tokens:
    - assistant: `labels != -100` (the trained span, what the training loss saw);
    - all: every non-pad token (the research scripts' definition).
    A token whose position id is 0 starts a conversation: predicting it from the previous
    conversation's last token crosses a document boundary, so it is never counted.
    `block_nll_assistant` / `block_tokens_assistant` hold the assistant sums of each block, in
    block order: the units the perplexity's bootstrap interval resamples (bootstrap.py).
    """
    import torch
    import torch.nn.functional as F

    if batch_size <= 0:
        raise ValueError(f"batch_size: must be positive, got {batch_size}")
    totals: dict[str, Any] = {"nll_assistant": 0.0, "tokens_assistant": 0, "nll_all": 0.0, "tokens_all": 0,
                              "block_nll_assistant": [], "block_tokens_assistant": []}
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    with torch.inference_mode():
        for start in range(0, len(blocks), batch_size):
            rows = [blocks[i] for i in range(start, min(start + batch_size, len(blocks)))]
            batch = collate_blocks(rows)
            input_ids, labels, positions = (batch[name].to(device) for name in BLOCK_COLUMNS)
            # attention_mask=None + restarting position_ids: transformers builds the block-diagonal
            # mask, but only without a KV cache (use_cache=True silently lets documents attend to
            # each other: measured logit differences of ~7 on a tiny GPT-2, transformers 5.24).
            out = model(input_ids=input_ids, position_ids=positions, attention_mask=None, use_cache=False)
            logits = out.logits if hasattr(out, "logits") else out
            # Logits at t predict the token at t+1.
            logits, next_ids = logits[:, :-1].float(), input_ids[:, 1:]
            next_labels, next_pos = labels[:, 1:], positions[:, 1:]
            nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), next_ids.reshape(-1),
                                  reduction="none").view_as(next_ids)
            same_doc = next_pos != 0
            assistant = (next_labels != IGNORE_INDEX) & same_doc
            every = (next_ids != pad_token_id) & same_doc
            totals["nll_assistant"] += float(nll[assistant].sum())
            totals["tokens_assistant"] += int(assistant.sum())
            totals["nll_all"] += float(nll[every].sum())
            totals["tokens_all"] += int(every.sum())
            totals["block_nll_assistant"] += torch.where(assistant, nll, 0.0).sum(dim=1, dtype=torch.float64).tolist()
            totals["block_tokens_assistant"] += assistant.sum(dim=1).tolist()
    if was_training and hasattr(model, "train"):
        model.train()
    return totals


def assistant_target_bytes(blocks: Any, tokenizer: Any) -> int:
    """UTF-8 bytes of the assistant target text (the tokens `token_nll_sums` scores as assistant).

    Each contiguous run of target tokens is decoded as a whole (byte-level BPE tokens can split a
    character), special tokens such as `<|im_end|>` contribute no bytes: they are not text.
    """
    total = 0
    for i in range(len(blocks)):
        ids, labels, pos = (block_column(blocks[i], name) for name in BLOCK_COLUMNS)
        run: list[int] = []
        for t in range(1, len(ids)):  # position 0 is never a target (nothing predicts it)
            if labels[t] != IGNORE_INDEX and pos[t] != 0:
                run.append(int(ids[t]))
                continue
            if run:
                total += len(tokenizer.decode(run, skip_special_tokens=True).encode("utf-8"))
                run = []
        if run:
            total += len(tokenizer.decode(run, skip_special_tokens=True).encode("utf-8"))
    return total


def perplexity(nll_sum: float, count: int) -> float:
    """exp(mean NLL); NaN when nothing was counted (rather than a misleading 1.0)."""
    if count <= 0:
        return float("nan")
    return math.exp(nll_sum / count)


def bits_per_byte(nll_sum_nats: float, n_bytes: int) -> float:
    """Total NLL in bits over UTF-8 bytes: comparable across tokenizers."""
    if n_bytes <= 0:
        return float("nan")
    return nll_sum_nats / math.log(2) / n_bytes


# ---------------------------------------------------------------------------------------------
# Overlap with references
# ---------------------------------------------------------------------------------------------
def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"predictions ({len(predictions)}) and references ({len(references)}) differ in length")


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> list[dict[str, float]]:
    """Per-row ROUGE-1/2/L F1 (rouge_score, Porter stemmer)."""
    from rouge_score import rouge_scorer

    _check_pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    rows = []
    for pred, ref in zip(predictions, references):
        s = scorer.score(ref, pred)  # score(target, prediction)
        rows.append({"rouge1": s["rouge1"].fmeasure, "rouge2": s["rouge2"].fmeasure, "rouge_l": s["rougeL"].fmeasure})
    return rows


def mean_rouge(per_row: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """
    >>> mean_rouge([{"rouge1": 1.0, "rouge2": 0.5, "rouge_l": 1.0}, {"rouge1": 0.0, "rouge2": 0.0, "rouge_l": 0.0}])
    {'rouge1': 0.5, 'rouge2': 0.25, 'rouge_l': 0.5}
    """
    keys = ("rouge1", "rouge2", "rouge_l")
    if not per_row:
        return {k: float("nan") for k in keys}
    return {k: sum(r[k] for r in per_row) / len(per_row) for k in keys}


@dataclass(frozen=True)
class CorpusStatistics:
    """Per-row sufficient statistics of one sacrebleu corpus metric (its score is a function of their
    column sums: an exact, fast bootstrap, as sacrebleu's own does), and the metric that scores them."""

    rows: list[list[int]]
    metric: Any  # the sacrebleu BLEU or CHRF object the rows were extracted with

    def score(self, summed: Sequence[int]) -> float:
        """The corpus score (0-100) of summed statistics."""
        return float(self.metric._compute_score_from_stats(list(summed)).score)


def corpus_statistics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, CorpusStatistics]:
    """BLEU and chrF statistics per row (sacrebleu defaults, one reference per row): `corpus_score`'s
    steps without its final sum, so they are extracted once for the score and its interval."""
    from sacrebleu.metrics import BLEU, CHRF

    _check_pairs(predictions, references)
    hypotheses, refs = list(predictions), [list(references)]
    result = {}
    for name, metric in (("bleu", BLEU()), ("chrf", CHRF())):
        metric._check_corpus_score_args(hypotheses, refs)
        result[name] = CorpusStatistics(rows=metric._extract_corpus_statistics(hypotheses, refs), metric=metric)
    return result


def corpus_bleu_chrf(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Corpus BLEU and chrF (0-100) with their sacrebleu signatures (how to reproduce the number)."""
    return bleu_chrf_scores(corpus_statistics(predictions, references))


def bleu_chrf_scores(statistics: Mapping[str, CorpusStatistics]) -> dict[str, Any]:
    """What `corpus_bleu_chrf` returns, from statistics already extracted (`corpus_statistics`)."""
    bleu, chrf = statistics["bleu"].metric, statistics["chrf"].metric
    # _aggregate_and_compute is corpus_score's own last step: the same numbers, to the last bit.
    bleu_score = bleu._aggregate_and_compute(statistics["bleu"].rows)
    chrf_score = chrf._aggregate_and_compute(statistics["chrf"].rows)
    bleu_sig, chrf_sig = str(bleu.get_signature()), str(chrf.get_signature())
    return {
        "bleu": float(bleu_score.score), "bleu_signature": bleu_sig,
        "bleu_formatted": bleu_score.format(signature=bleu_sig),
        "chrf": float(chrf_score.score), "chrf_signature": chrf_sig,
    }


def sentence_bleus(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Per-row sentence BLEU (0-100, effective order so short rows are not all zero)."""
    from sacrebleu.metrics import BLEU

    _check_pairs(predictions, references)
    metric = BLEU(effective_order=True)
    return [float(metric.sentence_score(p, [r]).score) for p, r in zip(predictions, references)]


def length_ratio(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean/std of prediction words / reference words (rows with an empty reference skipped).

    >>> length_ratio(["a b", "a b c d"], ["a b", "a b"])
    {'length_ratio_mean': 1.5, 'length_ratio_std': 0.5}
    """
    _check_pairs(predictions, references)
    ratios = [len(p.split()) / len(r.split()) for p, r in zip(predictions, references) if r.split()]
    if not ratios:
        return {"length_ratio_mean": float("nan"), "length_ratio_std": float("nan")}
    return {"length_ratio_mean": statistics.fmean(ratios), "length_ratio_std": statistics.pstdev(ratios)}


# ---------------------------------------------------------------------------------------------
# Diversity
# ---------------------------------------------------------------------------------------------
def distinct_n(texts: Iterable[str], *, n: int) -> float:
    """Unique n-grams / total n-grams over all texts (lower-cased whitespace words).

    >>> distinct_n(["the cat", "the dog"], n=1)
    0.75
    """
    total, unique = 0, set()
    for text in texts:
        words = text.lower().split()
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def self_bleu(texts: Sequence[str], *, max_samples: int = 200, seed: int = 0) -> float:
    """Mean sentence BLEU (0-100) of each text against all the others: high = repetitive outputs.

    Quadratic in the number of texts, so at most `max_samples` texts (a seeded sample) are used.
    """
    from sacrebleu.metrics import BLEU

    texts = [t for t in texts if t.strip()]
    if len(texts) > max_samples:
        texts = random.Random(seed).sample(texts, max_samples)
    if len(texts) < 2:
        return float("nan")
    metric = BLEU(effective_order=True)
    scores = [metric.sentence_score(t, texts[:i] + texts[i + 1:]).score for i, t in enumerate(texts)]
    return float(statistics.fmean(scores))


# ---------------------------------------------------------------------------------------------
# Exact answers
# ---------------------------------------------------------------------------------------------
def normalize_answer(text: str) -> str:
    """Lower-case, collapse whitespace, strip surrounding punctuation/quotes."""
    return re.sub(r"\s+", " ", text.lower()).strip().strip(".,!?;'\"` ").strip()


def answer_matches(prediction: str, answer: str) -> bool:
    """Is the normalized answer *contained* in the normalized prediction as a whole-word span?

    Containment (not equality), because replies wrap the answer in a sentence ("23 + 16 = 39.").
    Word boundaries keep "No" from matching "Not" and "3" from matching "39".

    >>> answer_matches("23 + 16 = 39.", "39"), answer_matches("23 + 16 = 391.", "39")
    (True, False)
    >>> answer_matches("Not sure.", "No")
    False
    """
    target = normalize_answer(answer)
    if not target:
        return False
    pattern = r"(?<![0-9a-z])" + re.escape(target) + r"(?![0-9a-z])"
    return re.search(pattern, normalize_answer(prediction)) is not None


def exact_hits(
    *, predictions: Sequence[str], answers: Sequence[str | None], tasks: Sequence[str | None]
) -> dict[str, list[int]]:
    """Per task family (and "all"): 1 or 0 for each row that has an answer, in row order.

    >>> exact_hits(predictions=["4", "yes", "x"], answers=["4", "no", None], tasks=["add", "yes_no", "add"])
    {'add': [1], 'all': [1, 0], 'yes_no': [0]}
    """
    hits: dict[str, list[int]] = defaultdict(list)
    for pred, answer, task in zip(predictions, answers, tasks):
        if answer is None or not str(answer).strip():
            continue
        hit = int(answer_matches(pred, str(answer)))
        for key in (task or "unknown", "all"):
            hits[key].append(hit)
    return dict(sorted(hits.items()))


def exact_accuracy(
    *, predictions: Sequence[str], answers: Sequence[str | None], tasks: Sequence[str | None]
) -> dict[str, dict[str, float | int]]:
    """Per task family (and "all"): answer-containment accuracy over rows that have an answer."""
    return accuracy_by_task(exact_hits(predictions=predictions, answers=answers, tasks=tasks))


def accuracy_by_task(hits: Mapping[str, Sequence[int]]) -> dict[str, dict[str, float | int]]:
    """
    >>> accuracy_by_task({"add": [1, 0], "all": [1, 0]})["add"]
    {'accuracy': 0.5, 'correct': 1, 'total': 2}
    """
    return {k: {"accuracy": sum(h) / len(h), "correct": sum(h), "total": len(h)} for k, h in hits.items()}
