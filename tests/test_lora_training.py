"""`config.lora`: LoRA and QLoRA fine-tuning of a pretrained base run, dry runs and merged exports (#13, item 4)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from sora_jax import checkpoint
from sora_jax import config as config_lib
from sora_jax.compression import lora, providers
from sora_jax.compression.names import SCHEMES as QLORA_SCHEMES
from sora_jax.errors import SoraError
from sora_jax.interop import load_hf_t5
from sora_jax.model import EncoderDecoder
from sora_jax.training.dry_run import dry_run
from sora_jax.training.loop import run
from sora_jax.workdir import load_workdir

REPO = Path(__file__).resolve().parents[1]
RANK, ALPHA = 4, 8.0


def tiny_config(tfds_dir: Path, steps: int = 20):
    config = config_lib.load_config_file(str(REPO / "configs" / "tiny.py"))
    config.data.data_dir = str(tfds_dir)
    config.num_train_steps, config.eval_every_steps, config.log_every_steps = steps, 1000, 2
    config.data.max_eval_examples, config.data.max_test_examples, config.data.num_sample_predictions = 8, 8, 0
    return config


def lora_config(tfds_dir: Path, base: Path, **changes):
    config = tiny_config(tfds_dir)
    config.init_from = f"workdir:{base}"
    config.lora.rank, config.lora.alpha = RANK, ALPHA
    config.optimizer.learning_rate = 1e-2
    config_lib.apply_overrides(config, changes)
    return config


@pytest.fixture(scope="module")
def base_dir(trained_run) -> Path:
    """The pretrained base: the session's tiny run (tests/conftest.py), 20 steps; only read."""
    return trained_run.path


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, tfds_dir, base_dir) -> Path:
    workdir = tmp_path_factory.mktemp("lora")
    run(lora_config(tfds_dir, base_dir), workdir)
    return workdir


@pytest.fixture(scope="module")
def qlora_dir(tmp_path_factory, tfds_dir, base_dir) -> Path:
    workdir = tmp_path_factory.mktemp("qlora")
    run(lora_config(tfds_dir, base_dir, **{"lora.base_quantization": "int8"}), workdir)
    return workdir


def _params(workdir: Path, step: int = 20) -> dict:
    return checkpoint.read_as_numpy(workdir / "checkpoints" / str(step) / "state")["params"]


def test_lora_fine_tune_trains_only_the_adapters(base_dir, lora_dir):
    base, tuned = providers.flat(_params(base_dir)), providers.flat(_params(lora_dir))
    adapters = {p: x for p, x in tuned.items() if p[-1].endswith(("_lora_a", "_lora_b"))}
    assert set(tuned) == set(base) | set(adapters)  # The whole tree is saved: frozen base plus adapters.
    for path, leaf in base.items():
        np.testing.assert_array_equal(tuned[path], leaf, err_msg="/".join(path))  # Bitwise frozen.
    # Every adapted layer's B started at zero and moved.
    b_leaves = [x for p, x in adapters.items() if p[-1] == "kernel_lora_b"]
    assert len(b_leaves) >= 4 * 5 and all(np.abs(b).max() > 0 for b in b_leaves)
    train = [e for e in map(json.loads, (lora_dir / "metrics.jsonl").read_text().splitlines())
             if e["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"] - 0.1, [e["loss"] for e in train]
    state = checkpoint.read_as_numpy(lora_dir / "checkpoints" / "20" / "state")
    opt_leaves = jax.tree.leaves(state["opt_state"])
    # AdamW moments for the adapters only (plus scalar counters): nothing shaped like a base kernel.
    assert sum(x.size for x in opt_leaves) < 2 * sum(x.size for x in adapters.values()) + 16


def test_export_merges_the_adapters_into_a_plain_model(lora_dir, tmp_path):
    from sora_jax.cli.export import main as export_main

    assert export_main([f"--workdir={lora_dir}", f"--out={tmp_path / 'hf'}"]) == 0
    model_config, exported, _ = load_hf_t5(tmp_path / "hf")
    saved = _params(lora_dir)
    merged = lora.merge_lora(saved, alpha=ALPHA)
    assert jax.tree.structure(exported) == jax.tree.structure(merged)
    for a, b in zip(jax.tree.leaves(exported), jax.tree.leaves(merged), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    # One kernel by hand: W + (alpha / rank) A @ B, reshaped to the kernel.
    q = saved["encoder"]["layers_0"]["self_attention"]["q"]
    want = q["kernel"] + (ALPHA / RANK) * (q["kernel_lora_a"] @ q["kernel_lora_b"]).reshape(q["kernel"].shape)
    np.testing.assert_allclose(exported["encoder"]["layers_0"]["self_attention"]["q"]["kernel"], want, atol=1e-6)
    # The plain model with the exported params gives the LoRA model's logits.
    loaded = load_workdir(lora_dir, restore=False)
    adapted = lora.lora_model(EncoderDecoder(loaded.model_config), RANK, ALPHA)
    rng = np.random.default_rng(0)
    enc, dec = rng.integers(2, 100, (2, 10)).astype(np.int32), rng.integers(2, 100, (2, 5)).astype(np.int32)
    # jax arrays: with numpy params, qwix 0.1.8's eager LoRA apply silently skips the adapters (measured).
    lora_logits = adapted.apply({"params": jax.tree.map(jax.numpy.asarray, saved)}, enc, dec)
    plain_logits = EncoderDecoder(loaded.model_config).apply({"params": exported}, enc, dec)
    np.testing.assert_allclose(np.asarray(plain_logits), np.asarray(lora_logits), atol=2e-5, rtol=1e-5)
    # eval and predict load the LoRA workdir as that same plain model.
    restored = load_workdir(lora_dir)
    for a, b in zip(jax.tree.leaves(jax.device_get(restored.params)), jax.tree.leaves(merged), strict=True):
        np.testing.assert_allclose(a, np.asarray(b), atol=1e-6)


def _train_losses(workdir: Path) -> list[float]:
    return [e["loss"] for e in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
            if e["split"] == "train"]


def test_qlora_trains_adapters_over_the_int8_quantized_pretrained_base(base_dir, qlora_dir):
    base, tuned = _params(base_dir), providers.flat(_params(qlora_dir))
    model_config = load_workdir(base_dir, restore=False).model_config
    qmodel = lora.lora_model(EncoderDecoder(model_config), RANK, ALPHA, base_scheme="int8")
    want = providers.flat(providers.quantize_base(EncoderDecoder(model_config), qmodel,
                                                  jax.tree.map(jax.numpy.asarray, base)))
    kernels = 0
    for path, leaf in want.items():  # The saved base is exactly the base run's params quantized, and frozen.
        if isinstance(leaf, providers.WithAux):
            kernels += 1
            assert tuned[(*path, "array", "qvalue")].dtype == np.int8, path
            np.testing.assert_array_equal(tuned[(*path, "array", "qvalue")], leaf.array.qvalue)
            np.testing.assert_array_equal(tuned[(*path, "array", "scale")], leaf.array.scale)
        else:
            np.testing.assert_array_equal(tuned[path], leaf, err_msg="/".join(path))
    assert kernels >= 5 * 4 + 1  # Every matmul weight, the LM head included.
    b_leaves = [x for p, x in tuned.items() if p[-1] == "kernel_lora_b"]
    assert len(b_leaves) >= 4 * 5 and all(np.abs(b).max() > 0 for b in b_leaves)
    losses = _train_losses(qlora_dir)
    assert losses[-1] < losses[0] - 0.1, losses


def test_qlora_export_and_serving_are_the_dequantized_base_plus_the_adapters(qlora_dir, tmp_path):
    from sora_jax.cli.export import main as export_main

    assert export_main([f"--workdir={qlora_dir}", f"--out={tmp_path / 'hf'}"]) == 0
    _, exported, _ = load_hf_t5(tmp_path / "hf")
    saved = _params(qlora_dir)
    # One kernel by hand: qvalue * per-channel scale + (alpha / rank) A @ B.
    q = saved["encoder"]["layers_0"]["self_attention"]["q"]
    base_q = q["kernel"]["array"]["qvalue"].astype(np.float32) * q["kernel"]["array"]["scale"]
    want = base_q + (ALPHA / RANK) * (q["kernel_lora_a"] @ q["kernel_lora_b"]).reshape(base_q.shape)
    np.testing.assert_allclose(exported["encoder"]["layers_0"]["self_attention"]["q"]["kernel"], want, atol=1e-6)
    # eval and predict serve the same merged model...
    restored = load_workdir(qlora_dir)
    for a, b in zip(jax.tree.leaves(jax.device_get(restored.params)), jax.tree.leaves(exported), strict=True):
        np.testing.assert_allclose(a, np.asarray(b), atol=1e-6)
    # ... whose logits are those of the QLoRA model the run trained.
    ckpt = checkpoint.Checkpointer(qlora_dir / "checkpoints", keep=3)
    qparams, _ = ckpt.restore_params(load_workdir(qlora_dir, restore=False).saved_abstract_params, None)
    ckpt.close()
    qmodel = lora.configured_lora_model(EncoderDecoder(restored.model_config), restored.config.lora)
    rng = np.random.default_rng(0)
    enc, dec = rng.integers(2, 100, (2, 10)).astype(np.int32), rng.integers(2, 100, (2, 5)).astype(np.int32)
    qlora_logits = qmodel.apply({"params": qparams}, enc, dec)
    plain_logits = EncoderDecoder(restored.model_config).apply({"params": exported}, enc, dec)
    np.testing.assert_allclose(np.asarray(plain_logits), np.asarray(qlora_logits), atol=1e-4, rtol=1e-4)


def test_qlora_resumes_from_its_checkpoint(tfds_dir, base_dir, qlora_dir, tmp_path):
    import shutil

    resumed = tmp_path / "resumed"
    shutil.copytree(qlora_dir, resumed)
    shutil.rmtree(resumed / "checkpoints" / "20")  # Resume from step 10 and train to 20 again.
    result = run(lora_config(tfds_dir, base_dir, **{"lora.base_quantization": "int8"}), resumed)
    assert result.resumed_from == 10
    for a, b in zip(jax.tree.leaves(_params(resumed)), jax.tree.leaves(_params(qlora_dir)), strict=True):
        np.testing.assert_array_equal(a, b)  # Bitwise the uninterrupted run's step 20.


def test_dry_run_reports_adapter_params_and_smaller_optimizer_state(base_dir, tfds_dir, capsys):
    result = dry_run(lora_config(tfds_dir, base_dir))
    out = capsys.readouterr().out
    assert f"LoRA rank {RANK}" in out and "for full fine-tuning" in out
    assert 0 < result["trainable_params"] < 0.2 * result["full_params"]
    assert result["opt_bytes_per_device"] < 0.2 * result["full_opt_bytes_per_device"]
    print(f"trainable {result['trainable_params']:,} of {result['full_params']:,}; optimizer bytes/device "
          f"{result['opt_bytes_per_device']:,} vs {result['full_opt_bytes_per_device']:,}")
    # QLoRA: the same adapters and optimizer state; the base's kernels stored in int8 (the float embedding stays).
    qlora = dry_run(lora_config(tfds_dir, base_dir, **{"lora.base_quantization": "int8"}))
    assert "QLoRA: the frozen base stored int8" in capsys.readouterr().out
    assert qlora["opt_bytes_per_device"] == result["opt_bytes_per_device"]
    assert qlora["full_param_bytes_per_device"] == result["full_param_bytes_per_device"]
    assert qlora["param_bytes_per_device"] < 0.7 * result["param_bytes_per_device"]
    print(f"QLoRA param bytes/device {qlora['param_bytes_per_device']:,} vs LoRA {result['param_bytes_per_device']:,}")


def test_bad_lora_settings_are_one_line_before_anything_runs(base_dir, tfds_dir, tmp_path):
    cases = [
        (dict(**{"lora.rank": -1}), "config.lora.rank=-1"),
        (dict(**{"lora.rank": 32}), "rank 32 is not below"),
        (dict(**{"lora.targets": ("q", "logits_dense")}), "unknown layer"),
        (dict(**{"lora.alpha": 0.0}), "config.lora.alpha"),
        (dict(init_from=""), "needs a pretrained base"),
        (dict(**{"lora.base_quantization": "int3"}), "config.lora.base_quantization='int3': use one of int8, int4"),
        (dict(**{"lora.base_quantization": "int8", "lora.rank": 0}), "set config.lora.rank too"),
    ]
    assert QLORA_SCHEMES == tuple(providers.STORAGE_TYPES)  # One list of names; each has a storage type.
    for number, (changes, match) in enumerate(cases):
        workdir = tmp_path / str(number)
        with pytest.raises(SoraError, match=match) as error:
            run(lora_config(tfds_dir, base_dir, **changes), workdir)
        assert "\n" not in str(error.value)
        assert not (workdir / "checkpoints").exists()


def test_dry_run_of_lora_with_scanned_layers_from_a_hugging_face_base(tfds_dir, capsys):
    config = tiny_config(tfds_dir)
    config.init_from = f"hf:{REPO / 'tests' / 'fixtures' / 'hf_t5' / 't5_v1_0'}"
    config.model.preset, config.model.scan_layers = "tiny", True
    config.lora.rank, config.lora.targets, config.lora.train_norms = 2, ("q", "v", "wo"), True
    result = dry_run(config)
    assert "compiled train step" in capsys.readouterr().out
    assert result["opt_bytes_per_device"] < 0.2 * result["full_opt_bytes_per_device"]
