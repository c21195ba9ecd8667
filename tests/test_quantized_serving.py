"""Quantized serving and training on tiny trained runs: sora-predict / sora-eval --quantize (PTQ), quantized
exports read back bit for bit, bad schemes, and quantization-aware training (config.quantization.qat)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax import Predictor, load_workdir
from sora_jax import config as config_lib
from sora_jax.cli import eval as eval_cli
from sora_jax.cli import export as export_cli
from sora_jax.cli import predict as predict_cli
from sora_jax.compression import providers
from sora_jax.errors import SoraError
from sora_jax.evaluation.workdir_eval import evaluate_workdir
from sora_jax.model import shift_right
from sora_jax.model.params import tree_bytes
from sora_jax.training.loop import run

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["这个产品很好用", "质量太差了，再也不买了", "酒店很干净，服务也好", "一般般吧", "物流很快 good",
         "房间太小了", "书的内容很好", "不推荐", "送货很慢", "价格便宜 good room", "the hotel was clean",
         "服务态度差", "非常满意", "电池不耐用", "味道不错", "下次还来"]
BAD_SCHEME = "error: --quantize=int3 is not a supported quantization scheme; use one of int8, int4."


def train_tiny(path: Path, tfds_dir: Path, steps: int = 20, **overrides: str) -> Path:
    """`steps` steps of configs/tiny.py in `path` (checkpoint and evaluation at the end only)."""
    config = config_lib.load_config_file(str(REPO / "configs" / "tiny.py"))
    config.data.data_dir = str(tfds_dir)
    config_lib.apply_overrides(config, {"num_train_steps": str(steps), "checkpoint_every_steps": str(steps),
                                        "eval_every_steps": str(steps), "log_every_steps": "10",
                                        "data.max_test_examples": "32", "tokenizer.max_training_sentences": "500",
                                        **overrides})
    run(config, path)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, trained_run) -> Path:
    """This module's copy of the session's float-trained tiny run (tests/conftest.py), whose greedy outputs differ
    from input to input; evaluations write into it."""
    return Path(shutil.copytree(trained_run.path, tmp_path_factory.mktemp("float_run") / "run"))


@pytest.fixture(scope="module")
def float_predictor(workdir) -> Predictor:
    return Predictor.from_workdir(str(workdir))


@pytest.fixture(scope="module")
def int8_predictor(workdir) -> Predictor:
    return Predictor.from_workdir(str(workdir), quantize="int8")


def kernels(params) -> dict:
    """{path: qvalue array} of the quantized weights of a param tree."""
    return {path: leaf.array.qvalue for path, leaf in providers.flat(params).items()
            if isinstance(leaf, providers.WithAux)}


def greedy_ids(predictor: Predictor, tokens: np.ndarray) -> np.ndarray:
    """The predictor's own compiled greedy decode of `tokens` -> int32 [B, 6]."""
    with predictor.run.activate():
        return np.asarray(predictor._generator.decode(predictor.run.params, tokens,
                                                    predictor.decode_options(max_length=6)))


def logits(predictor: Predictor, tokens: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """Teacher-forced logits [B, L, V] of `outputs` given `tokens`, under the predictor's model and params."""
    model = predictor.run.model
    with predictor.run.activate():
        return np.asarray(jax.jit(model.apply)({"params": predictor.run.params}, tokens, shift_right(outputs, 0)))


def test_int8_predictions_agree_with_the_float_model(float_predictor, int8_predictor):
    run = int8_predictor.run
    assert run.quantization == "int8" and run.step == 20
    quantized = kernels(run.params)
    # Every matmul weight (attention, MLP, the untied LM head) and nothing else is an int8 array on the devices.
    float_kernels = {path for path in providers.flat(float_predictor.run.params) if path[-1] == "kernel"}
    assert set(quantized) == float_kernels and ("decoder", "logits_dense", "kernel") in float_kernels
    assert all(q.dtype == jnp.int8 for q in quantized.values())
    note = [n for n in run.notes if n.startswith("int8 weights: params ")]
    assert len(note) == 1 and "(float32 " in note[0], run.notes

    want = float_predictor.predict_with_scores(TEXTS, max_length=6)
    got = int8_predictor.predict_with_scores(TEXTS, max_length=6)
    assert len({p.text for p in want}) > 1  # The outputs depend on the input: agreement means something.
    same = sum(w.text == g.text for w, g in zip(want, got, strict=True)) / len(TEXTS)
    # The tokens behind those texts, and both models' teacher-forced logits along the float model's outputs.
    tokens, _ = float_predictor.encode(TEXTS)
    float_out, int8_out = greedy_ids(float_predictor, tokens), greedy_ids(int8_predictor, tokens)
    assert float_predictor.tokenizer.decode(int8_out) == [g.text for g in got]
    float_logits, int8_logits = logits(float_predictor, tokens, float_out), logits(int8_predictor, tokens, float_out)
    gap = float(np.abs(float_logits - int8_logits).max())
    margins = []
    for row in np.nonzero((float_out != int8_out).any(axis=1))[0]:
        t = int(np.nonzero(float_out[row] != int8_out[row])[0][0])  # The first step where the two differ.
        step_logits = float_logits[row, t]
        margins.append(float(step_logits[float_out[row, t]] - step_logits[int8_out[row, t]]))
    print(f"int8 vs float greedy on {len(TEXTS)} inputs: {same:.0%} identical outputs; max |logit difference| "
          f"{gap:.4f} (float logits: std {float_logits.std():.3f}); float-model margins where they part: "
          f"{[round(m, 4) for m in margins]}")
    # Measured on this run: 75% identical, logit gap 0.072 against a logit std of about 1; the outputs parted only
    # where the float model's top two tokens were within 0.02 of each other. An untrained-looking model has many
    # such near-ties, so the bound that matters is the second one: int8 only flips the float model's near-ties.
    assert gap < 0.15
    assert all(0 <= m <= 2 * gap for m in margins)
    assert same >= 0.5
    # Where the outputs agree, their scores differ by at most what the logit gap allows (log-softmax moves by at most
    # twice the largest logit change, per token).
    score_gaps = [abs(w.score - g.score) for w, g in zip(want, got, strict=True) if w.text == g.text]
    print(f"max |score difference| of the identical outputs: {max(score_gaps):.4f}")
    assert max(score_gaps) <= 2 * gap * 6

    # Beam search and sampling (both with the KV cache) run unchanged on the quantized model.
    beam_float = float_predictor.predict(TEXTS[:4], method="beam", beam_size=2, max_length=6)
    beam_int8 = int8_predictor.predict(TEXTS[:4], method="beam", beam_size=2, max_length=6)
    assert sum(a == b for a, b in zip(beam_float, beam_int8, strict=True)) >= 3
    sampled = int8_predictor.predict(TEXTS[:4], method="sample", seed=3, max_length=6)
    assert sampled == int8_predictor.predict(TEXTS[:4], method="sample", seed=3, max_length=6)


def test_int4_quantizes_to_half_the_int8_kernel_bytes(workdir, int8_predictor):
    int4 = Predictor.from_workdir(str(workdir), quantize="int4")
    assert all(q.dtype == jnp.int4 for q in kernels(int4.run.params).values())
    int8_bytes = tree_bytes(kernels(int8_predictor.run.params))
    assert tree_bytes(kernels(int4.run.params)) * 2 == int8_bytes
    assert len(int4.predict(TEXTS[:4], max_length=6)) == 4


def test_sora_predict_quantize_prints_the_quantized_outputs_and_the_bytes(workdir, int8_predictor, tmp_path,
                                                                          capsys):
    inputs = tmp_path / "in.txt"
    inputs.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    assert predict_cli.main([f"--workdir={workdir}", "--quantize=int8", f"--input={inputs}", "--jsonl",
                             "--max_length=6"]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    expected = int8_predictor.predict_with_scores(TEXTS, max_length=6)
    assert [line["prediction"] for line in lines] == [p.text for p in expected]
    assert [line["score"] for line in lines] == pytest.approx([p.score for p in expected], abs=1e-5)
    assert "note: int8 weights: params " in captured.err


def test_quantized_export_restores_bitwise_and_predicts_like_the_in_memory_model(workdir, int8_predictor,
                                                                                 tmp_path, capsys):
    out = tmp_path / "int8"
    assert export_cli.main([f"--workdir={workdir}", f"--out={out}", "--quantize=int8"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"exported step 20 of {workdir} to {out} (int8 weights: params ")
    with capsys.disabled():
        print(printed.strip())
    assert json.loads((out / "quantized.json").read_text())["scheme"] == "int8"

    exported = load_workdir(str(out))
    assert exported.exported and exported.quantization == "int8" and exported.step == 20
    saved = jax.device_get(int8_predictor.run.params)  # What export_quantized saved: the same PTQ of step 20.
    restored = jax.device_get(exported.params)
    assert jax.tree.structure(restored) == jax.tree.structure(saved)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(saved), strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.asarray(got).tobytes() == np.asarray(want).tobytes()
    assert all(q.dtype == jnp.int8 for q in kernels(exported.params).values())

    from_export = Predictor.from_workdir(str(out))
    assert from_export.predict_with_scores(TEXTS, max_length=6) == int8_predictor.predict_with_scores(
        TEXTS, max_length=6)
    # The same export, through sora-predict.
    inputs = tmp_path / "in.txt"
    inputs.write_text("\n".join(TEXTS[:3]) + "\n", encoding="utf-8")
    assert predict_cli.main([f"--workdir={out}", f"--input={inputs}", "--max_length=6"]) == 0
    assert capsys.readouterr().out.splitlines() == int8_predictor.predict(TEXTS[:3], max_length=6)


def test_eval_quantize_metrics_are_close_to_float(workdir, capsys):
    float_result, = evaluate_workdir(str(workdir), max_examples=64, say=lambda _: None, note=lambda _: None)
    notes: list[str] = []
    int8_result, = evaluate_workdir(str(workdir), max_examples=64, quantize="int8", say=lambda _: None,
                                    note=notes.append)
    assert any(n.startswith("int8 weights: params ") for n in notes)
    assert int8_result.directory.name == "validation_step20_int8" and float_result.directory.name == (
        "validation_step20")
    summary = json.loads((int8_result.directory / "metrics.json").read_text())
    assert summary["quantization"] == "int8" and summary["examples"] == 64
    f, q = float_result.metrics, int8_result.metrics
    with capsys.disabled():
        print(f"eval float / int8: loss {f['loss']:.4f} / {q['loss']:.4f}; token_accuracy {f['token_accuracy']:.4f} / "
              f"{q['token_accuracy']:.4f}; exact_match {f['exact_match']:.4f} / {q['exact_match']:.4f}")
    assert q["loss"] == pytest.approx(f["loss"], rel=0.01)
    assert abs(q["token_accuracy"] - f["token_accuracy"]) <= 0.02
    assert abs(q["exact_match"] - f["exact_match"]) <= 0.05
    # The command line prints the bytes and the quantized metrics.
    assert eval_cli.main([f"--workdir={workdir}", "--quantize=int8", "--max_examples=16"]) == 0
    captured = capsys.readouterr()
    assert "eval validation @ step 20, int8 weights: loss " in captured.out
    assert "note: int8 weights: params " in captured.err


def error_line(main, argv: list[str], capsys) -> str:
    """Run a CLI's main(argv), expect exit status 2, return its one stderr line."""
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_bad_scheme_exits_2_with_one_line_naming_the_supported_ones(workdir, tmp_path, capsys):
    assert error_line(predict_cli.main, [f"--workdir={workdir}", "--quantize=int3"], capsys) == BAD_SCHEME
    assert error_line(eval_cli.main, [f"--workdir={workdir}", "--quantize=int3"], capsys) == BAD_SCHEME
    assert error_line(export_cli.main, [f"--workdir={workdir}", f"--out={tmp_path / 'x'}", "--quantize=int3"],
                      capsys) == BAD_SCHEME
    assert not (tmp_path / "x").exists()
    with pytest.raises(SoraError, match="use one of int8, int4"):
        Predictor.from_workdir(str(workdir), quantize="fp8")
    # An export is served with its own scheme and step only.
    out = tmp_path / "int8"
    assert export_cli.main([f"--workdir={workdir}", f"--out={out}", "--quantize=int8"]) == 0
    capsys.readouterr()
    assert error_line(predict_cli.main, [f"--workdir={out}", "--quantize=int4"], capsys) == (
        f"error: {out} is a quantized export with int8 weights; it cannot be served with --quantize=int4: drop "
        "--quantize, or export the training run again with --quantize=int4.")
    assert error_line(predict_cli.main, [f"--workdir={out}", "--step=10"], capsys) == (
        f"error: {out} is a quantized export of step 20 only; drop --step.")
    assert error_line(export_cli.main, [f"--workdir={out}", f"--out={tmp_path / 'y'}", "--quantize=int8"],
                      capsys) == f"error: {out} is already a quantized export; export the training run it came from."
    config = config_lib.base_config()
    config.quantization.qat = "int3"
    with pytest.raises(SoraError, match=r"^config.quantization.qat='int3': use one of int8, int4 \(or '' for"):
        config_lib.validate(config)


def test_a_qat_run_learns_keeps_float_params_and_serves_int8(tmp_path, tfds_dir):
    workdir = train_tiny(tmp_path / "qat", tfds_dir, **{"quantization.qat": "int8"})
    events = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e.get("split") == "train"]
    print(f"QAT int8 train loss by log window: {[round(x, 3) for x in losses]}")
    assert len(losses) == 2 and losses[-1] < losses[0] - 0.5
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["quantization"] == {"qat": "int8"}

    float_run = load_workdir(str(workdir))  # The checkpoint holds float params, as float training's.
    assert all(jnp.issubdtype(x.dtype, jnp.floating) for x in jax.tree.leaves(float_run.params))
    assert not kernels(float_run.params)
    assert any("--quantize=int8" in n for n in float_run.notes)
    int8 = Predictor.from_workdir(str(workdir), quantize="int8")
    assert all(q.dtype == jnp.int8 for q in kernels(int8.run.params).values())
    assert len(int8.predict(TEXTS[:4], max_length=6)) == 4
