"""Text metrics by task kind, computed with the standard libraries (sacrebleu, rouge-score)."""

from __future__ import annotations

from collections.abc import Sequence


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


def text_metrics(kind: str, predictions: Sequence[str], targets: Sequence[str], *, labels: Sequence[str] = (),
                 target_language: str = "en") -> dict[str, float]:
    """The metrics a task of `kind` reports on decoded text."""
    metrics = {"exact_match": exact_match(predictions, targets)}
    if kind == "classification" and labels:
        metrics["macro_f1"] = macro_f1(predictions, targets, labels)
    elif kind in ("translation", "generation") and targets:
        metrics.update(bleu_and_chrf(predictions, targets, target_language))
    return metrics
