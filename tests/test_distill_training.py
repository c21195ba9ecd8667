"""`config.distill`: a student trained against a teacher inside the compiled train step (issue #13, item 3)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import linen as nn

from sora_jax import checkpoint, sharding
from sora_jax import config as config_lib
from sora_jax.errors import SoraError
from sora_jax.model import EncoderDecoder
from sora_jax.model.loss import teacher_forced_logits
from sora_jax.training import state as state_lib
from sora_jax.training import step as step_lib
from sora_jax.training import teacher as teacher_lib
from sora_jax.training.loop import run

REPO = Path(__file__).resolve().parents[1]
HF_FIXTURE = REPO / "tests" / "fixtures" / "hf_t5" / "t5_v1_0"


def tiny_config(tfds_dir: Path, steps: int = 20):
    config = config_lib.load_config_file(str(REPO / "configs" / "tiny.py"))
    config.data.data_dir = str(tfds_dir)
    config.num_train_steps, config.eval_every_steps = steps, 1000
    config.data.max_eval_examples, config.data.max_test_examples, config.data.num_sample_predictions = 8, 8, 0
    return config


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tfds_dir) -> Path:
    """A trained teacher run, twice as wide as the tiny student."""
    config = tiny_config(tfds_dir)
    config.model.d_model, config.model.d_ff = 64, 128
    workdir = tmp_path_factory.mktemp("teacher")
    run(config, workdir)
    return workdir


def _batch(vocab: int, rows: int = 8, enc_len: int = 12, dec_len: int = 6) -> dict[str, np.ndarray]:
    """A padded batch: row i has enc_len - i % 4 input and dec_len - i % 3 target tokens."""
    rng = np.random.default_rng(0)
    batch = {}
    for side, length, cut in (("encoder", enc_len, 4), ("decoder", dec_len, 3)):
        real = np.arange(length)[None, :] < (length - np.arange(rows) % cut)[:, None]
        tokens = np.where(real, rng.integers(2, vocab - 1, (rows, length)), 0).astype(np.int32)
        batch[f"{side}_{'input' if side == 'encoder' else 'target'}_tokens"] = tokens
        batch[f"{side}_segment_ids"] = real.astype(np.int32)
        batch[f"{side}_positions"] = np.where(real, np.arange(length)[None, :], 0).astype(np.int32)
    return batch


def _by_hand(student_BLV, teacher_BLV, targets_BL, weights_BL, temperature, alpha, z_loss):
    """Loops over the real tokens in float64: the loss, KL (times T^2) and CE means."""
    def log_softmax(x):
        x = x - x.max()
        return x - np.log(np.exp(x).sum())

    kls, ces, zs = [], [], []
    for b, t in zip(*np.nonzero(weights_BL), strict=True):
        s, te = student_BLV[b, t].astype(np.float64), teacher_BLV[b, t].astype(np.float64)
        log_ps, log_pt = log_softmax(s / temperature), log_softmax(te / temperature)
        kls.append(temperature**2 * np.sum(np.exp(log_pt) * (log_pt - log_ps)))
        ces.append(-log_softmax(s)[targets_BL[b, t]])
        zs.append(z_loss * (np.log(np.exp(s - s.max()).sum()) + s.max()) ** 2)
    kl, ce, z = np.mean(kls), np.mean(ces), np.mean(zs)
    return alpha * kl + (1 - alpha) * ce + z, kl, ce


@pytest.mark.parametrize("grad_accum_steps", [1, 2])
def test_in_step_loss_is_the_hand_computed_kl_and_ce_mix_and_the_teacher_is_untouched(grad_accum_steps):
    config = config_lib.base_config()
    config.model.preset, config.batch_size, config.grad_accum_steps = "tiny", 8, grad_accum_steps
    config.distill.temperature, config.distill.alpha = 2.0, 0.3
    config.optimizer.learning_rate = 1e-2
    mesh = sharding.mesh_from_config(config.mesh)
    rules = sharding.check_rules(config.mesh.logical_axis_rules)
    student_config = config_lib.resolve_model_config(config.model, 100)
    teacher_model_cfg = config.model.copy_and_resolve_references()
    teacher_model_cfg.d_model, teacher_model_cfg.d_ff, teacher_model_cfg.num_encoder_layers = 48, 96, 3
    teacher_config = config_lib.resolve_model_config(teacher_model_cfg, 100)
    setup = state_lib.build_training_setup(config, student_config, mesh, rules)
    teacher = teacher_lib.teacher_setup(config.distill, teacher_config, student_config, mesh, rules)
    state = state_lib.init_train_state(setup.init_params, setup.tx, setup.state_shardings, 0, setup.rng_impl)
    teacher_init = EncoderDecoder(teacher_config).init(jax.random.key(7), np.zeros((1, 8), np.int32),
                                                       np.zeros((1, 8), np.int32))["params"]
    teacher_params = jax.device_put(nn.unbox(teacher_init), teacher.param_shardings)
    teacher_before = jax.device_get(teacher_params)
    batch = _batch(student_config.vocab_size)
    # The reference logits, from the params the first step starts from (the state is donated to the step).
    student_BLV = np.asarray(jax.jit(lambda p: teacher_forced_logits(setup.model, p, batch))(state.params))
    teacher_BLV = np.asarray(jax.jit(lambda p: teacher_forced_logits(teacher.model, p, batch))(teacher_params))
    assert teacher_BLV.shape == student_BLV.shape

    with sharding.activate(mesh, rules):
        train_step = step_lib.compile_train_step(setup, step_lib.StepOptions.from_config(config), mesh, teacher)
        history = []
        for _ in range(3):
            state, metrics = train_step(state, sharding.global_batch(batch, mesh), teacher_params)
            history.append(jax.device_get(metrics))
    weights = (batch["decoder_segment_ids"] > 0).astype(np.float32)
    want_loss, want_kl, want_ce = _by_hand(student_BLV, teacher_BLV, batch["decoder_target_tokens"], weights,
                                           2.0, 0.3, config.loss.z_loss)
    np.testing.assert_allclose(history[0]["loss"], want_loss, rtol=2e-5)
    np.testing.assert_allclose(history[0]["kl"], want_kl, rtol=2e-5)
    np.testing.assert_allclose(history[0]["ce"], want_ce, rtol=2e-5)
    assert history[-1]["loss"] < history[0]["loss"], [m["loss"] for m in history]
    assert want_kl > 0.01  # The two models really disagree.
    for a, b in zip(jax.tree.leaves(teacher_before), jax.tree.leaves(jax.device_get(teacher_params)), strict=True):
        np.testing.assert_array_equal(a, b)  # Bitwise: never updated, never donated.


def _tree_hash(directory: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(directory)).encode() + file.read_bytes())
    return digest.hexdigest()


def test_a_tiny_student_distilled_from_a_trained_teacher_trains(teacher_dir, tfds_dir, tmp_path):
    teacher_files = _tree_hash(teacher_dir / "checkpoints")
    config = tiny_config(tfds_dir)
    config.distill.teacher = f"workdir:{teacher_dir}"
    config.log_every_steps = 2
    result = run(config, tmp_path)
    assert result.final_step == 20
    train = [e for e in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if e["split"] == "train"]
    assert {"loss", "kl", "ce", "z_loss"} <= set(train[0])
    for event in train:  # The logged loss is the configured mix (alpha 0.5) plus the z-loss.
        assert abs(event["loss"] - (0.5 * event["kl"] + 0.5 * event["ce"] + event["z_loss"])) < 1e-4
    assert train[-1]["loss"] < train[0]["loss"] - 0.5, [e["loss"] for e in train]
    assert train[-1]["kl"] < train[0]["kl"], [e["kl"] for e in train]
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["tokenizer"]["model_path"] == str(teacher_dir / "tokenizer.model")  # The teacher's vocabulary.
    assert saved["model"]["d_model"] == 32  # The student's own architecture.
    state = checkpoint.read_as_numpy(tmp_path / "checkpoints" / "20" / "state")
    assert set(state) == {"step", "params", "opt_state", "rng"}  # No teacher in the checkpoint.
    assert state["params"]["encoder"]["layers_0"]["mlp"]["wo"]["kernel"].shape[-1] == 32
    assert _tree_hash(teacher_dir / "checkpoints") == teacher_files


def _bad(config, workdir: Path, match: str) -> None:
    with pytest.raises(SoraError, match=match) as error:
        run(config, workdir)
    assert "\n" not in str(error.value)
    assert not (workdir / "checkpoints").exists()  # Refused before anything was compiled or saved.


def test_bad_teachers_are_one_line_before_anything_runs(teacher_dir, tfds_dir, tmp_path):
    def with_teacher(spec: str, **changes):
        config = tiny_config(tfds_dir)
        config.distill.teacher = spec
        config_lib.apply_overrides(config, changes)
        return config

    _bad(with_teacher(str(teacher_dir)), tmp_path / "a", "use workdir:DIR")
    _bad(with_teacher(f"workdir:{tmp_path / 'nowhere'}"), tmp_path / "b", "config.distill.teacher=")
    _bad(with_teacher(f"workdir:{teacher_dir}@7"), tmp_path / "c", "no checkpoint step 7")
    _bad(with_teacher(f"hf:{tmp_path}"), tmp_path / "d", "config.distill.teacher: .* has no config.json")
    _bad(with_teacher(f"workdir:{teacher_dir}", **{"tokenizer.model_path": str(HF_FIXTURE / "spiece.model")}),
         tmp_path / "e", "shares its teacher's vocabulary")
    _bad(with_teacher(f"workdir:{teacher_dir}", **{"model.vocab_size": 4096}), tmp_path / "f",
         "has a vocabulary of 2176 but .*vocab_size is 4096")
    _bad(with_teacher(f"workdir:{teacher_dir}", init_from=f"hf:{HF_FIXTURE}"), tmp_path / "g",
         "shares its teacher's vocabulary")
    _bad(with_teacher(f"workdir:{teacher_dir}", **{"distill.alpha": 1.5}), tmp_path / "h", "alpha=1.5")
    _bad(with_teacher(f"workdir:{teacher_dir}", **{"loss.label_smoothing": 0.1}), tmp_path / "i",
         "label_smoothing")


def test_train_cli_prints_one_error_line_for_a_missing_teacher(tfds_dir, tmp_path, capsys):
    from sora_jax.cli.train import main

    status = main([f"--config={REPO / 'configs' / 'tiny.py'}", f"--workdir={tmp_path / 'run'}",
                   f"--config.data.data_dir={tfds_dir}", f"--config.distill.teacher=workdir:{tmp_path / 'none'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("error: config.distill.teacher="), err


def test_dry_run_compiles_the_distillation_step_with_the_teacher(teacher_dir, tfds_dir, capsys):
    from sora_jax.training.dry_run import dry_run

    config = tiny_config(tfds_dir)
    config.distill.teacher = f"workdir:{teacher_dir}"
    result = dry_run(config)
    out = capsys.readouterr().out
    assert f"teacher workdir:{teacher_dir}" in out and "compiled train step" in out
    assert result["teacher_param_bytes_per_device"] > result["param_bytes_per_device"]
