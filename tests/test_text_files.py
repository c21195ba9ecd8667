"""The user's unlabelled text files: lines, paragraphs, JSONL, fingerprinted rebuilds and errors with file + line."""

from __future__ import annotations

import json
import re

import pytest
from test_builders import read_split

from sora_jax.data import builders, tasks
from sora_jax.data.builders import text_files
from sora_jax.errors import SoraError

PLAIN = "第一行文本\n  indented line, kept as is  \n\n\nthird {not json}\r\nlast line without newline"
PARAGRAPHS = ["第一行文本\n  indented line, kept as is  ", "third {not json}\nlast line without newline"]
RECORDS = [{"body": "多行\n文本", "id": 1}, {"body": 'quote " and tab \t', "id": 2}, {"body": "emoji 😀"}]


def documents(builder, split):
    return [ex["text"].decode("utf-8") for ex in read_split(builder, split)]


def write_jsonl(path, records, ensure_ascii=False):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=ensure_ascii) for r in records) + "\n\n", encoding="utf-8")
    return path


def test_lines_paragraphs_and_jsonl_round_trip(tmp_path):
    (tmp_path / "a_plain.txt").write_bytes(("\ufeff" + PLAIN).encode("utf-8"))
    write_jsonl(tmp_path / "b_records.jsonl", RECORDS, ensure_ascii=True)
    dev = write_jsonl(tmp_path / "dev.jsonl", RECORDS[:1])
    options = {"train_files": str(tmp_path / "[ab]_*"), "eval_files": str(dev), "text_key": "body"}
    lines = builders.prepare(builders.TextFiles, tmp_path / "d", **options)
    bodies = [r["body"] for r in RECORDS]
    assert documents(lines, "train") == [
        "第一行文本", "  indented line, kept as is  ", "third {not json}", "last line without newline", *bodies
    ]
    assert documents(lines, "validation") == documents(lines, "test") == ["多行\n文本"]
    paragraphs = builders.prepare(builders.TextFiles, tmp_path / "d", text_format="paragraphs", **options)
    assert paragraphs.data_dir != lines.data_dir
    assert documents(paragraphs, "train") == PARAGRAPHS + bodies  # JSONL records stay one document each.
    assert list(text_files.read_documents(str(tmp_path / "a_plain.txt"), "paragraphs")) == [
        (1, PARAGRAPHS[0]), (5, PARAGRAPHS[1])
    ]


def test_rebuilt_when_contents_change(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("one\ntwo\n", encoding="utf-8")
    options = {"train_files": str(train), "eval_files": str(train)}
    first = builders.prepare(builders.TextFiles, tmp_path / "d", **options)
    assert builders.prepare(builders.TextFiles, tmp_path / "d", **options).data_dir == first.data_dir
    train.write_text("one\nthree\n", encoding="utf-8")
    second = builders.prepare(builders.TextFiles, tmp_path / "d", **options)
    assert second.data_dir != first.data_dir and documents(second, "train") == ["one", "three"]


@pytest.mark.parametrize(
    ("name", "content", "line", "message"),
    [
        ("bad.jsonl", '{"text": "a"}\n\n{"text": }\n', 3, "invalid JSON"),
        ("key.jsonl", '{"text": "a"}\n{"body": "b", "id": 1}\n', 2,
         "missing key 'text' (keys present: ['body', 'id'])"),
        ("list.jsonl", '["a"]\n', 1, "expected a JSON object"),
        ("number.jsonl", '{"text": 3}\n', 1, "'text' must be a JSON string, got int"),
        ("empty_text.jsonl", '{"text": "a"}\n{"text": "  "}\n', 2, "empty 'text'"),
        ("latin1.txt", "ok\ncaf\xe9\n", 2, "not valid UTF-8"),
        ("blank.txt", "\n \n\t\n", 1, "file is empty"),
    ],
)
def test_errors_name_file_and_line(tmp_path, name, content, line, message):
    bad = tmp_path / name
    bad.write_bytes(content.encode("latin-1") if name == "latin1.txt" else content.encode("utf-8"))
    good = tmp_path / "good.txt"
    good.write_text("fine\n", encoding="utf-8")
    with pytest.raises(SoraError) as err:
        builders.prepare(builders.TextFiles, tmp_path / "d", train_files=str(bad), eval_files=str(good))
    text = str(err.value)
    assert f"{bad}, line {line}:" in text and message in text and "\n" not in text


def test_option_errors(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("fine\n", encoding="utf-8")
    with pytest.raises(SoraError, match="text_format 'sentences' is not one of lines, paragraphs"):
        builders.TextFiles(data_dir=str(tmp_path), train_files=str(good), eval_files=str(good), text_format="sentences")
    with pytest.raises(SoraError, match=re.escape("eval_files is empty: set it to comma-separated text/JSONL")):
        builders.TextFiles(data_dir=str(tmp_path), train_files=str(good), eval_files=" ")
    with pytest.raises(SoraError, match="matches no file"):
        builders.TextFiles(data_dir=str(tmp_path), train_files=str(good), eval_files=str(tmp_path / "nope*.txt"))


def test_format_detection(tmp_path):
    sniffed = tmp_path / "corpus.dat"
    sniffed.write_text('\n{"text": "a"}\n', encoding="utf-8")
    assert text_files.file_format(str(sniffed)) == "jsonl"
    assert list(text_files.read_documents(str(sniffed))) == [(2, "a")]
    braces = tmp_path / "braces.txt"
    braces.write_text('{"text": "a"}\n', encoding="utf-8")  # .txt is plain text whatever the content.
    assert list(text_files.read_documents(str(braces))) == [(1, '{"text": "a"}')]


def test_text_files_task(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("甲\n\n乙\n", encoding="utf-8")
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"text": "丙"}])
    task = tasks.get_task("text_files", {"train_files": str(train), "eval_files": str(dev)})
    assert task.kind == "text"
    builder = task.make_builder(str(tmp_path / "d"), {"train_files": str(train), "eval_files": str(dev)})
    source = builders.data_source(builder, "train")
    assert [task.to_text_pair(source[i]) for i in range(len(source))] == [{"text": "甲"}, {"text": "乙"}]
    paragraphs = task.make_builder(
        str(tmp_path / "d"), {"train_files": str(train), "eval_files": str(dev), "text_format": "paragraphs"}
    )
    assert documents(paragraphs, "train") == ["甲", "乙"] and documents(paragraphs, "validation") == ["丙"]
    with pytest.raises(SoraError, match="'text_files' needs train_files and eval_files"):
        task.make_builder(str(tmp_path / "d"), {})
