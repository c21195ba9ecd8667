"""Text metrics by task kind, computed with the standard libraries (sacrebleu, rouge-score).

| task kind      | metrics (besides the teacher-forced loss and token accuracy of the evaluator) |
| -------------- | ------------------------------------------------------------------------------ |
| classification | exact_match, macro_f1 (over the task's labels)                                  |
| translation    | exact_match, bleu, chrf                                                         |
| generation     | exact_match, bleu, chrf, rouge1, rouge2, rougeL                                 |

exact_match and macro_f1 are fractions in [0, 1]; BLEU, chrF and ROUGE are on sacrebleu's 0-100 scale.
BLEU uses sacrebleu's `zh` tokenizer for Chinese targets; ROUGE uses `CjkTokenizer` (each CJK character is a
token, latin words and numbers are lowercased words), because rouge-score's default tokenizer drops every
non-ASCII character and would score Chinese text as empty.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")

# Scripts written without spaces between words: each character is one token. CJK ideographs (with
# extensions A-F and compatibility ideographs), kana, and CJK symbols are covered; Hangul is written with
# spaces, so Korean stays word-tokenized.
_CJK_RANGES = ("\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u31a0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
               "\U00020000-\U0003134f")
_TOKEN = re.compile(f"[{_CJK_RANGES}]|[^\\W_{_CJK_RANGES}]+")


class CjkTokenizer:
    """A rouge-score tokenizer for mixed Chinese / latin text: every CJK character is a token, runs of other
    letters and digits are lowercased word tokens, punctuation and whitespace are dropped.

    >>> CjkTokenizer().tokenize("我喜欢 Python 3!")
    ['我', '喜', '欢', 'python', '3']
    """

    def tokenize(self, text: str) -> list[str]:
        return _TOKEN.findall(text.lower())


def exact_match(predictions: Sequence[str], targets: Sequence[str]) -> float:
    """Fraction of predictions equal to their target (surrounding whitespace ignored)."""
    if not targets:
        return 0.0
    return sum(p.strip() == t.strip() for p, t in zip(predictions, targets, strict=True)) / len(targets)


def macro_f1(predictions: Sequence[str], targets: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean over `labels` of per-label F1 (a prediction outside `labels` counts as wrong)."""
    scores = []
    for label in labels:
        tp = sum(p.strip() == label and t.strip() == label for p, t in zip(predictions, targets, strict=True))
        fp = sum(p.strip() == label and t.strip() != label for p, t in zip(predictions, targets, strict=True))
        fn = sum(p.strip() != label and t.strip() == label for p, t in zip(predictions, targets, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def bleu_and_chrf(predictions: Sequence[str], targets: Sequence[str], target_language: str) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu); Chinese targets use sacrebleu's `zh` tokenizer."""
    import sacrebleu

    tokenize = "zh" if target_language.startswith("zh") else "13a"
    bleu = sacrebleu.corpus_bleu(list(predictions), [list(targets)], tokenize=tokenize)
    chrf = sacrebleu.corpus_chrf(list(predictions), [list(targets)])
    return {"bleu": bleu.score, "chrf": chrf.score}


def rouge(predictions: Sequence[str], targets: Sequence[str]) -> dict[str, float]:
    """Mean per-example ROUGE-1/2/L F-measure (rouge-score, `CjkTokenizer`, no stemming), times 100."""
    from rouge_score import rouge_scorer

    if not targets:
        return {name: 0.0 for name in ROUGE_TYPES}
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False, tokenizer=CjkTokenizer())
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, target in zip(predictions, targets, strict=True):
        scores = scorer.score(target, prediction)  # (target, prediction): the library's argument order.
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    return {name: 100.0 * total / len(targets) for name, total in totals.items()}


def text_metrics(kind: str, predictions: Sequence[str], targets: Sequence[str], *, labels: Sequence[str] = (),
                 target_language: str = "en") -> dict[str, float]:
    """The metrics a task of `kind` reports on decoded text (see the module docstring)."""
    metrics = {"exact_match": exact_match(predictions, targets)}
    if kind == "classification" and labels:
        metrics["macro_f1"] = macro_f1(predictions, targets, labels)
    elif kind in ("translation", "generation") and targets:
        metrics.update(bleu_and_chrf(predictions, targets, target_language))
        if kind == "generation":
            metrics.update(rouge(predictions, targets))
    return metrics


def primary_metric(kind: str, labels: Sequence[str] = ()) -> str:
    """The metric to select checkpoints by (higher is better for all of them): macro_f1 for classification
    with labels, bleu for translation, rougeL for generation, else exact_match."""
    if kind == "classification":
        return "macro_f1" if labels else "exact_match"
    return {"translation": "bleu", "generation": "rougeL"}.get(kind, "exact_match")
