"""Evaluation metrics on hand-computed cases: masks, boundaries, overlap scores, diversity."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from exp1_assets.evaluation import metrics

PAD = 0


class CopyModel(torch.nn.Module):
    """Logits we control: predicts "the next token repeats this one" with probability 0.7.

    A wrong shift (scoring a token with its own position's logits) would make every target "right".
    """

    def __init__(self, vocab: int = 4, p_right: float = 0.7) -> None:
        super().__init__()
        self.vocab, self.p_right = vocab, p_right
        self.calls = []

    def forward(self, *, input_ids, position_ids, attention_mask, use_cache):
        self.calls.append((input_ids.shape, attention_mask, use_cache))
        wrong = (1 - self.p_right) / (self.vocab - 1)
        probs = torch.full((*input_ids.shape, self.vocab), wrong)
        probs.scatter_(-1, input_ids.unsqueeze(-1), self.p_right)
        return SimpleNamespace(logits=probs.log())


def test_token_nll_sums_respects_labels_pads_and_document_starts():
    model = CopyModel()
    # Two conversations packed in one block + one pad filler; labels mark assistant tokens.
    block = {
        "input_ids":    [2, 1, 1, 2, 1, 3, PAD, PAD],
        "labels":       [-100, -100, 1, -100, 1, 3, -100, -100],
        "position_ids": [0, 1, 2, 0, 1, 2, 0, 1],
    }
    sums = metrics.token_nll_sums(model, [block, block], batch_size=1, device="cpu", pad_token_id=PAD)
    right, wrong = -math.log(0.7), -math.log(0.1)
    # Targets (predicted from the previous token): pos1 1<-2 wrong, pos2 1<-1 right,
    # pos3 starts a document (never counted), pos4 1<-2 wrong, pos5 3<-1 wrong, pads never.
    assert sums["tokens_assistant"] == 2 * 3  # labels at 2, 4, 5
    assert sums["nll_assistant"] == pytest.approx(2 * (right + 2 * wrong), rel=1e-5)
    assert sums["tokens_all"] == 2 * 4  # 1, 2, 4, 5
    assert sums["nll_all"] == pytest.approx(2 * (right + 3 * wrong), rel=1e-5)
    # Per block too (the perplexity interval resamples blocks): each block's own assistant sums.
    assert sums["block_tokens_assistant"] == [3, 3]
    assert sums["block_nll_assistant"] == pytest.approx([right + 2 * wrong] * 2, rel=1e-6)
    # One forward per batch of 1; attention_mask=None and no cache (else packed documents mix).
    assert model.calls == [(torch.Size([1, 8]), None, False)] * 2
    ppl = metrics.perplexity(sums["nll_assistant"], sums["tokens_assistant"])
    assert ppl == pytest.approx(math.exp((right + 2 * wrong) / 3), rel=1e-5)


def test_perplexity_and_bits_per_byte_edge_cases():
    assert math.isnan(metrics.perplexity(1.0, 0))
    assert metrics.bits_per_byte(math.log(2) * 10, 5) == pytest.approx(2.0)
    assert math.isnan(metrics.bits_per_byte(1.0, 0))


def test_assistant_target_bytes_counts_decoded_utf8_without_specials():
    class Tok:
        def decode(self, ids, skip_special_tokens):
            assert skip_special_tokens
            return "".join({1: "é", 3: "ab", 9: ""}[i] for i in ids)  # 9 plays <|im_end|>

    block = {"input_ids": [5, 1, 3, 9, 5, 1], "labels": [-100, 1, 3, 9, -100, 1], "position_ids": [0, 1, 2, 3, 0, 1]}
    assert metrics.assistant_target_bytes([block], Tok()) == 2 + 2 + 0 + 2


def test_rouge_and_bleu_known_strings():
    rows = metrics.rouge_scores(["the cat sat on the mat", "completely different"], ["the cat sat on the mat", "the dog"])
    assert rows[0] == {"rouge1": 1.0, "rouge2": 1.0, "rouge_l": 1.0}
    assert rows[1]["rouge_l"] == 0.0
    # Stemming: "cats running" vs "cat run" share both stems.
    assert metrics.rouge_scores(["cats running"], ["cat run"])[0]["rouge1"] == 1.0
    # LCS "a b d" of 4 vs 4 tokens: P = R = 3/4.
    assert metrics.rouge_scores(["a b c d"], ["a b e d"])[0]["rouge_l"] == pytest.approx(0.75)
    scores = metrics.corpus_bleu_chrf(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert scores["bleu"] == pytest.approx(100.0) and scores["chrf"] == pytest.approx(100.0)
    assert scores["bleu_signature"].startswith("nrefs:1|") and "tok:13a" in scores["bleu_signature"]
    assert metrics.corpus_bleu_chrf(["x y z"], ["a b c"])["bleu"] == 0.0
    assert metrics.sentence_bleus(["a b c d", "q"], ["a b c d", "a b c d"]) == [pytest.approx(100.0), 0.0]
    with pytest.raises(ValueError, match="differ in length"):
        metrics.rouge_scores(["a"], [])


def test_length_ratio_distinct_and_self_bleu():
    ratio = metrics.length_ratio(["a b c", "a", "x"], ["a b c", "a b", ""])
    assert ratio["length_ratio_mean"] == pytest.approx(0.75) and ratio["length_ratio_std"] == pytest.approx(0.25)
    texts = ["the cat sat", "the cat ran"]
    assert metrics.distinct_n(texts, n=1) == pytest.approx(4 / 6)
    assert metrics.distinct_n(texts, n=2) == pytest.approx(3 / 4)  # "the cat" twice
    assert metrics.distinct_n(texts, n=4) == 0.0  # no 4-grams at all
    same = ["a b c d e", "a b c d e", "a b c d e"]
    assert metrics.self_bleu(same) == pytest.approx(100.0)
    assert metrics.self_bleu(["a b c d", "e f g h", "i j k l"]) == 0.0
    assert math.isnan(metrics.self_bleu(["only one"]))
    # The cap keeps the cost bounded and is seeded.
    many = [f"w{i} x{i % 3} y z" for i in range(50)]
    assert metrics.self_bleu(many, max_samples=10, seed=1) == metrics.self_bleu(many, max_samples=10, seed=1)


def test_exact_accuracy_per_task_uses_whole_word_containment():
    acc = metrics.exact_accuracy(
        predictions=["23 + 16 = 39.", "23 + 16 = 391.", "No, 743 is odd.", "Nothing.", "anything"],
        answers=["39", "39", "No", "No", None],
        tasks=["arithmetic", "arithmetic", "yes_no", "yes_no", "story"],
    )
    assert acc["arithmetic"] == {"accuracy": 0.5, "correct": 1, "total": 2}
    assert acc["yes_no"] == {"accuracy": 0.5, "correct": 1, "total": 2}
    assert "story" not in acc  # no answer: not scored
    assert acc["all"] == {"accuracy": 0.5, "correct": 2, "total": 4}
    assert metrics.answer_matches("'gorpalan' is spelled g-o-r-p-a-l-a-n.", "g-o-r-p-a-l-a-n")
