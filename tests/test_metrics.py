"""Text metrics against hand-computed values and the libraries' own outputs."""

from __future__ import annotations

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from sora_jax.evaluation.metrics import (
    CjkTokenizer,
    bleu_and_chrf,
    exact_match,
    macro_f1,
    primary_metric,
    rouge,
    text_metrics,
)


def test_exact_match_ignores_surrounding_whitespace_only():
    assert exact_match(["a", " b ", "c", "D"], ["a", "b", "d", "d"]) == pytest.approx(2 / 4)
    assert exact_match([], []) == 0.0


def test_macro_f1_by_hand():
    labels = ("positive", "negative")
    predictions = ["positive", "positive", "negative", "garbage"]
    targets = ["positive", "negative", "negative", "positive"]
    # positive: tp 1, fp 1, fn 1 -> 2/4; negative: tp 1, fp 0, fn 1 -> 2/3.
    assert macro_f1(predictions, targets, labels) == pytest.approx((2 / 4 + 2 / 3) / 2)
    metrics = text_metrics("classification", predictions, targets, labels=labels)
    assert metrics == pytest.approx({"exact_match": 2 / 4, "macro_f1": (2 / 4 + 2 / 3) / 2})


def test_cjk_tokenizer_splits_characters_and_keeps_latin_words():
    assert CjkTokenizer().tokenize("我喜欢 Python 3，日本語のテキスト! café_bar") == [
        "我", "喜", "欢", "python", "3", "日", "本", "語", "の", "テ", "キ", "ス", "ト", "café", "bar"]


def test_rouge_on_chinese_by_hand():
    # Characters: 我 喜 欢 猫 vs 我 喜 欢 狗. Unigrams: 3 of 4 shared -> F 0.75. Bigrams: 我喜 喜欢 of 3 -> 2/3.
    # Longest common subsequence 3 -> F 0.75.
    assert rouge(["我喜欢猫"], ["我喜欢狗"]) == pytest.approx({"rouge1": 75.0, "rouge2": 200 / 3, "rougeL": 75.0})
    # The library's default tokenizer drops every non-ASCII character: Chinese would score 0.
    default = rouge_scorer.RougeScorer(["rouge1"]).score("我喜欢狗", "我喜欢猫")["rouge1"].fmeasure
    assert default == 0.0


def test_rouge_mixed_text_by_hand_and_mean_over_examples():
    # prediction: hello world 你 好 (4 tokens); target: hello there 你 好 吗 (5): 3 shared unigrams.
    p, r = 3 / 4, 3 / 5
    first = 2 * p * r / (p + r)
    scores = rouge(["Hello, world! 你好", "完全不同"], ["hello there 你好吗", "没有关系"])
    assert scores["rouge1"] == pytest.approx(100 * (first + 0.0) / 2)


def test_bleu_and_chrf_equal_sacrebleu_and_use_the_zh_tokenizer_for_chinese():
    predictions = ["我们今天去公园散步。", "这本书非常有意思", "天气很好"]
    targets = ["我们今天去公园里散步。", "这本书很有意思", "今天天气很好"]
    got = bleu_and_chrf(predictions, targets, "zh")
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [targets], tokenize="zh").score)
    assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, [targets]).score)
    # Without the zh tokenizer each unsegmented sentence is one "word": BLEU would be near zero.
    assert sacrebleu.corpus_bleu(predictions, [targets], tokenize="13a").score < got["bleu"] / 2
    english = bleu_and_chrf(["the cat sat on the mat"], ["the cat sat on a mat"], "en")
    assert english["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(["the cat sat on the mat"], [["the cat sat on a mat"]]).score)


def test_metrics_by_task_kind():
    predictions, targets = ["今天天气很好", "你好"], ["今天天气不错", "你好"]
    translation = text_metrics("translation", predictions, targets, target_language="zh")
    assert set(translation) == {"exact_match", "bleu", "chrf"}
    generation = text_metrics("generation", predictions, targets, target_language="zh")
    assert set(generation) == {"exact_match", "bleu", "chrf", "rouge1", "rouge2", "rougeL"}
    # 今 天 天 气 很 好 vs 今 天 天 气 不 错: 4 of 6 unigrams; the second pair is identical.
    assert generation["rouge1"] == pytest.approx(100 * (4 / 6 + 1.0) / 2)
    assert generation["exact_match"] == 0.5
    assert primary_metric("classification", ("a", "b")) == "macro_f1"
    assert primary_metric("translation") == "bleu" and primary_metric("generation") == "rougeL"
