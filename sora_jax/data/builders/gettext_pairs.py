"""English <-> other-language message pairs from the gettext catalogs installed on the machine.

Source: `<locale_dir>/<lang>/LC_MESSAGES/*.mo` (Debian-family systems ship them with each program: git,
postgres, gnupg, gtk, coreutils, libc, ...), read with Python's `gettext.GNUTranslations`. Each package's
own licence applies (mostly GPL/LGPL); the catalogs are read at run time, never redistributed.

Filters: plural entries, empty translations, translations equal to the English text and English texts
with fewer than 2 words (after removing format codes such as %s, %(x)s, {x} and <tags>) are skipped;
pairs are de-duplicated on the English text (the first catalog in file-name order keeps it). The strict
subset (the default) keeps only pairs with <= 12 English words and no newline, `%` or `--` on either side.

The split is BY CATALOG: every pair of a catalog goes to the same split, chosen by a seeded hash of the
catalog's family (catalogs of one project, such as the postgres-15 tools or binutils, form one family),
so near-duplicate strings of one program never cross splits. Families are taken in hash order and added
to test, then validation, while each is under 5 % of the pairs (skipping a family that would take it
over 10 %); the rest is train.
"""

from __future__ import annotations

import collections
import dataclasses
import gettext
import hashlib
import logging
import os
import pathlib
import re
from typing import Any

import tensorflow_datasets as tfds

from sora_jax.data.builders import _common
from sora_jax.errors import SoraError

DEFAULT_LOCALE_DIR = "/usr/share/locale"
LANGS = ("zh_CN", "zh_TW", "de", "fr", "ja")
HELD_OUT_FRACTION = 0.05  # Target share of the pairs in validation and in test.
MAX_STRICT_WORDS = 12

_FORMAT_CODE = re.compile(
    r"%\([^)]*\)[-#0 +]*\d*(?:\.\d+)?[a-zA-Z]"  # %(name)s
    r"|%[-#0 +'I]*(?:\d+\$)?\*?\d*(?:\.\*?\d+)?(?:hh|h|ll|l|L|q|j|z|Z|t)?[a-zA-Z%]"  # %s, %-10.3lf, %1$s, %%
    r"|\{[^{}]*\}"  # {x}
    r"|<[^<>]*>"  # <tags>
)
_ENGLISH_WORD = re.compile(r"[A-Za-z]+(?:['\u2019-][A-Za-z]+)*")
_LANG_NAME = re.compile(r"[A-Za-z]{2,3}(?:_[A-Za-z]{2})?(?:@[A-Za-z]+)?")
# Catalogs of one project share many near-identical strings: they are split as one family.
_FAMILIES = (
    (re.compile(r"(initdb|libpq\d*|pg_\w+|pgscripts|plpgsql|postgres|psql|ecpg\w*)-\d+"), "postgresql"),
    (re.compile(r"bfd|binutils|gas|gold|gprof|ld|opcodes"), "binutils"),
    (re.compile(r"iso_.*"), "iso-codes"),
    (re.compile(r"(lib)?apt.*|python-apt"), "apt"),
)


def english_word_count(msgid: str) -> int:
    """Number of English words in a message once format codes and tags are removed."""
    return len(_ENGLISH_WORD.findall(_FORMAT_CODE.sub(" ", msgid)))


def is_strict(en: str, translation: str) -> bool:
    """The strict subset: short one-line messages without format codes or command-line options."""
    both = en + translation
    return len(en.split()) <= MAX_STRICT_WORDS and "\n" not in both and "%" not in both and "--" not in both


def catalog_family(file_name: str) -> str:
    """The split unit of a catalog file: 'psql-15.mo' -> 'postgresql', 'gtk20-properties.mo' -> 'gtk'."""
    stem = file_name.removesuffix(".mo")
    for pattern, family in _FAMILIES:
        if pattern.fullmatch(stem):
            return family
    return re.split(r"[-_.\d]", stem.lower(), maxsplit=1)[0] or stem


def read_catalog(path: pathlib.Path) -> list[tuple[str, str]]:
    """The usable (English, translation) pairs of one .mo file, both stripped, in catalog order."""
    with open(path, "rb") as f:
        catalog = gettext.GNUTranslations(f)._catalog  # The way data.md documents to list all entries.
    pairs = []
    for key, value in catalog.items():
        if isinstance(key, tuple) or not isinstance(value, str):  # (msgid, n): a plural form
            continue
        en = key.rpartition("\x04")[2].strip()  # Drop a msgctxt ("context\x04msgid").
        translation = value.strip()
        if not translation or translation == en or english_word_count(en) < 2:
            continue
        pairs.append((en, translation))
    return pairs


def catalog_dir(locale_dir: str, lang: str) -> pathlib.Path:
    return pathlib.Path(locale_dir).expanduser() / lang / "LC_MESSAGES"


def read_pairs(locale_dir: str, lang: str, strict: bool) -> list[tuple[str, str, str]]:
    """All pairs of a language as (English, translation, catalog file name), de-duplicated on English."""
    folder = catalog_dir(locale_dir, lang)
    files = sorted(folder.glob("*.mo"), key=lambda p: p.name)
    if not files:
        root = pathlib.Path(locale_dir).expanduser()
        have = sorted(p.parent.parent.name for p in root.glob("*/LC_MESSAGES/*.mo"))
        langs = sorted(set(have))
        raise SoraError(
            f"no gettext catalogs {folder}/*.mo for language {lang!r}"
            + (f" (languages with catalogs there: {', '.join(langs[:20])})" if langs else "")
            + ": install programs with translations (Debian/Ubuntu packages ship them unless the image"
            " excludes /usr/share/locale in /etc/dpkg/dpkg.cfg.d; e.g. `apt-get install git gnupg coreutils`)"
            " or set task_options.locale_dir to a folder holding <lang>/LC_MESSAGES/*.mo"
        )
    seen: set[str] = set()
    pairs = []
    for path in files:
        try:
            catalog = read_catalog(path)
        except (OSError, UnicodeDecodeError, ValueError, LookupError) as e:  # A broken or mis-encoded file.
            logging.warning("Skipping gettext catalog %s: %s", path, e)
            continue
        for en, translation in catalog:
            key = _common.normalize_ws(en)
            if key in seen:
                continue
            seen.add(key)
            if not strict or is_strict(en, translation):
                pairs.append((en, translation, path.name))
    if not pairs:
        raise SoraError(
            f"the gettext catalogs in {folder} hold no usable pairs: point locale_dir to other catalogs"
        )
    return pairs


def assign_splits(pair_counts: dict[str, int], seed: int) -> dict[str, str]:
    """Maps each catalog family to "train", "validation" or "test" (see the module docstring)."""
    if len(pair_counts) < 3:
        raise SoraError(
            f"only {len(pair_counts)} catalog families found ({', '.join(sorted(pair_counts))}); the split by"
            " catalog needs at least 3: install more translated programs or use another language"
        )
    target = HELD_OUT_FRACTION * sum(pair_counts.values())
    totals = {"test": 0, "validation": 0}
    assignment = {}
    for family in sorted(pair_counts, key=lambda f: (_common.stable_hash(seed, f), f)):
        n = pair_counts[family]
        assignment[family] = "train"
        for split in ("test", "validation"):
            if totals[split] < target and totals[split] + n <= 2 * target:
                assignment[family] = split
                totals[split] += n
                break
    for split in ("test", "validation"):  # Tiny corpora: make sure no held-out split is empty.
        if not totals[split]:
            family = min(
                (f for f, s in assignment.items() if s == "train"), key=lambda f: (pair_counts[f], f)
            )
            assignment[family] = split
            totals[split] = pair_counts[family]
    return assignment


def split_pairs(locale_dir: str, lang: str, strict: bool) -> dict[str, list[tuple[str, str, str]]]:
    """The pairs of each split ("train", "validation", "test") exactly as the builder writes them."""
    pairs = read_pairs(locale_dir, lang, strict)
    counts = collections.Counter(catalog_family(catalog) for _, _, catalog in pairs)
    assignment = assign_splits(counts, _common.SPLIT_SEED)
    by_split: dict[str, list[tuple[str, str, str]]] = {"train": [], "validation": [], "test": []}
    for pair in pairs:
        by_split[assignment[catalog_family(pair[2])]].append(pair)
    return by_split


@dataclasses.dataclass(eq=False)
class GettextPairsConfig(tfds.core.BuilderConfig):
    """lang: the catalog language folder; strict: keep the strict subset only; locale_dir: catalogs' root."""

    lang: str = "zh_CN"
    strict: bool = True
    locale_dir: str = DEFAULT_LOCALE_DIR


def _config_name(lang: str, strict: bool, locale_dir: str) -> str:
    name = lang.replace("@", "_") + ("" if strict else "_full")
    resolved = os.path.abspath(os.path.expanduser(locale_dir))
    if resolved != DEFAULT_LOCALE_DIR:
        name += "_dir" + hashlib.sha256(resolved.encode()).hexdigest()[:10]
    return name


class GettextPairs(tfds.core.GeneratorBasedBuilder):
    """gettext message pairs: {"en": Text, "translation": Text, "catalog": Text (the .mo file name)}.

    Configs: "<lang>" (strict subset, the default is "zh_CN") and "<lang>_full" for each of LANGS; or pass
    `lang=`, `strict=` and `locale_dir=` to build any other combination. Read back with
    `builders.data_source`: Text features decode to UTF-8 `bytes`.
    """

    VERSION = tfds.core.Version("1.0.0")
    code_path = _common.module_code_path(__file__)
    RELEASE_NOTES = {"1.0.0": "Initial release: filtered, de-duplicated on msgid, split by catalog family."}
    BUILDER_CONFIGS = [
        GettextPairsConfig(name=_config_name(lang, strict, DEFAULT_LOCALE_DIR), lang=lang, strict=strict)
        for lang in LANGS
        for strict in (True, False)
    ]

    def __init__(
        self,
        *,
        lang: str | None = None,
        strict: bool | None = None,
        locale_dir: str | None = None,
        **kwargs: Any,
    ):
        if lang is not None or strict is not None or locale_dir is not None:
            if kwargs.get("config") is not None:
                raise SoraError("GettextPairs: pass either config= or lang=/strict=/locale_dir=, not both")
            kwargs["config"] = self.make_config(
                lang or "zh_CN", True if strict is None else bool(strict), locale_dir or DEFAULT_LOCALE_DIR
            )
        _common.use_builtin_config(type(self), kwargs)
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    @classmethod
    def make_config(cls, lang: str, strict: bool, locale_dir: str) -> GettextPairsConfig:
        """The config for these options: a built-in one where it exists (tfds requires the same object)."""
        if not _LANG_NAME.fullmatch(lang):
            raise SoraError(
                f"gettext language {lang!r} is not a locale name: use one like zh_CN, de or pt_BR"
            )
        name = _config_name(lang, strict, locale_dir)
        builtin = cls.get_builder_config(name)
        if builtin is not None:
            return builtin
        return GettextPairsConfig(
            name=name, lang=lang, strict=strict, locale_dir=os.path.abspath(os.path.expanduser(locale_dir))
        )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="English <-> translation pairs from installed gettext catalogs, split by catalog.",
            features=tfds.features.FeaturesDict(
                {
                    "en": tfds.features.Text(),
                    "translation": tfds.features.Text(),
                    "catalog": tfds.features.Text(),
                }
            ),
            supervised_keys=("en", "translation"),
            homepage="https://www.gnu.org/software/gettext/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # Everything comes from the local catalogs; nothing is downloaded.
        config = self.builder_config
        by_split = split_pairs(config.locale_dir, config.lang, config.strict)
        return {name: self._generate_examples(examples) for name, examples in by_split.items()}

    def _generate_examples(self, examples: list[tuple[str, str, str]]):
        for i, (en, translation, catalog) in enumerate(examples):
            yield i, {"en": en, "translation": translation, "catalog": catalog}
