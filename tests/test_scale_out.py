"""Sharding on 8 fake CPU devices: mesh checks, sharded state, equal results on different meshes, checkpoints
restored onto other meshes, corrupt-checkpoint fallback, params-only restore, and no per-step host pulls."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from sora_jax import checkpoint, sharding
from sora_jax import config as config_lib
from sora_jax.errors import SoraError
from sora_jax.model import PRESETS, ModelConfig
from sora_jax.training import state as state_lib
from sora_jax.training import step as step_lib
from sora_jax.training.loop import run

REPO = Path(__file__).resolve().parents[1]
RULES = sharding.check_rules(config_lib.DEFAULT_LOGICAL_AXIS_RULES)


def make_config(**mesh: int):
    config = config_lib.load_config_file(str(REPO / "configs" / "tiny.py"))
    config.model.dropout_rate = 0.0
    config.data.max_test_examples = 8  # The runs below check training, not the final evaluation.
    for axis, size in mesh.items():
        config.mesh[axis] = size
    return config


def make_setup(config, mesh):
    model_config = ModelConfig(vocab_size=128, **{**PRESETS["tiny"], "d_model": 64, "num_heads": 4})
    return state_lib.build_training_setup(config, model_config, mesh, RULES)


def random_batch(rows: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    batch = {}
    for prefix, key, length in (("encoder", "encoder_input_tokens", 16), ("decoder", "decoder_target_tokens", 8)):
        lengths = rng.integers(2, length + 1, rows)
        segments = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
        batch[key] = np.where(segments, rng.integers(3, 128, (rows, length)), 0).astype(np.int32)
        batch[f"{prefix}_segment_ids"] = segments
        batch[f"{prefix}_positions"] = np.where(segments, np.arange(length), 0).astype(np.int32)
    return batch


def train_steps(mesh_sizes: dict[str, int], num_steps: int = 3):
    config = make_config(**mesh_sizes)
    mesh = sharding.mesh_from_config(config.mesh)
    setup = make_setup(config, mesh)
    state = state_lib.init_train_state(setup.init_params, setup.tx, setup.state_shardings, 0, setup.rng_impl)
    losses = []
    with sharding.activate(mesh, RULES):
        train_step = step_lib.compile_train_step(setup, step_lib.StepOptions.from_config(config), mesh)
        for i in range(num_steps):
            state, metrics = train_step(state, sharding.global_batch(random_batch(seed=i), mesh))
            losses.append(float(jax.device_get(metrics["loss"])))
    return state, losses, setup, mesh


def test_there_are_eight_fake_devices():
    assert jax.device_count() == 8


@pytest.mark.parametrize(("sizes", "message"), [
    ({"data": 3, "fsdp": 1, "tensor": 1}, r"data\*fsdp\*tensor = 3\*1\*1 = 3 but there are 8 devices"),
    ({"data": -1, "fsdp": 3, "tensor": 1}, r"8 is not divisible by 3"),
])
def test_mesh_that_does_not_fit_the_devices_is_refused(sizes, message):
    with pytest.raises(SoraError, match=message):
        sharding.make_mesh(sizes)


def test_fsdp_zero_means_automatic_and_other_zero_sizes_are_refused():
    config = make_config(data=-1, fsdp=0)
    assert dict(sharding.mesh_from_config(config.mesh).shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    with pytest.raises(SoraError, match="must be positive, or -1"):
        sharding.make_mesh({"data": 0, "fsdp": 1, "tensor": 1})


def test_unknown_logical_axis_or_mesh_axis_is_refused():
    with pytest.raises(SoraError, match="unknown logical axis 'embedding'"):
        sharding.check_rules((("embedding", "fsdp"),))
    with pytest.raises(SoraError, match="unknown mesh axis 'model'"):
        sharding.check_rules((("mlp", "model"),))


def test_dimension_not_divisible_by_its_mesh_axes_names_the_parameter():
    config = make_config(data=1, fsdp=1, tensor=8)
    mesh = sharding.mesh_from_config(config.mesh)
    expected = r"decoder/layers_0/cross_attention/k/kernel has shape \(64, 4, 16\): dimension 4 is not divisible"
    with pytest.raises(SoraError, match=expected):
        make_setup(config, mesh)  # 4 heads over 8 tensor-parallel devices


def test_batch_not_divisible_by_data_parallel_degree_fails_before_compiling(tmp_path, tfds_dir):
    config = make_config(data=8)
    config.batch_size = 12
    config.data.data_dir = str(tfds_dir)
    with pytest.raises(SoraError, match=r"batch_size / grad_accum_steps = 12 does not divide over 8 data-parallel"):
        run(config, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_state_is_created_sharded_by_the_logical_rules():
    _, _, setup, mesh = train_steps({"data": 2, "fsdp": 2, "tensor": 2}, num_steps=0)
    state = state_lib.init_train_state(setup.init_params, setup.tx, setup.state_shardings, 0, setup.rng_impl)
    wi = state.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]  # logical ("embed", "mlp")
    assert wi.sharding.spec == P("fsdp", "tensor")
    assert wi.addressable_shards[0].data.shape == (wi.shape[0] // 2, wi.shape[1] // 2)
    mu = state.opt_state[1][0].mu["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]  # Adam moment: same sharding
    assert mu.sharding.spec == P("fsdp", "tensor")


def test_data_fsdp_tensor_mesh_computes_what_one_device_computes():
    sharded, sharded_losses, _, _ = train_steps({"data": 2, "fsdp": 2, "tensor": 2})
    single, single_losses, _, _ = train_steps({"data": 8, "fsdp": 1, "tensor": 1})
    np.testing.assert_allclose(sharded_losses, single_losses, rtol=1e-5)
    assert sharded_losses[-1] < sharded_losses[0]
    for a, b in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(single.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def _dummy_iterator():
    import grain

    from sora_jax.data.pipeline import ShardedBatches

    return ShardedBatches({0: iter(grain.MapDataset.source(list(range(10))).to_iter_dataset())})


@pytest.mark.parametrize("target", [{"data": 8, "fsdp": 1, "tensor": 1}, {"data": 1, "fsdp": 4, "tensor": 2},
                                    "one_device"])
def test_checkpoint_saved_on_2x2x2_restores_exactly_onto_another_mesh(tmp_path, target):
    saved, _, _, _ = train_steps({"data": 2, "fsdp": 2, "tensor": 2}, num_steps=2)
    ckpt = checkpoint.Checkpointer(tmp_path, keep=2)
    ckpt.save(2, saved, _dummy_iterator())
    ckpt.wait()

    config = make_config(data=1, fsdp=1, tensor=1)
    if target == "one_device":
        mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    else:
        mesh = sharding.make_mesh(target)
    setup = make_setup(config, mesh)
    restored, step = ckpt.restore(setup.abstract_state, _dummy_iterator())
    ckpt.close()
    assert step == 2
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for leaf, expected in zip(jax.tree.leaves(restored), jax.tree.leaves(setup.state_shardings), strict=True):
        assert leaf.sharding.is_equivalent_to(expected, leaf.ndim)


def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    state, _, setup, _ = train_steps({"data": 8, "fsdp": 1, "tensor": 1}, num_steps=1)
    directory = tmp_path / "checkpoints"
    ckpt = checkpoint.Checkpointer(directory, keep=3)
    ckpt.save(1, state, _dummy_iterator())
    later = state.replace(step=state.step + 1)
    ckpt.save(2, later, _dummy_iterator())
    ckpt.wait()
    # Corrupt every array file of step 2 (as a half-written or damaged disk would).
    damaged = [p for p in (directory / "2" / "state").rglob("*") if p.is_file() and p.stat().st_size > 0
               and "metadata" not in p.name]
    assert damaged
    for path in damaged:
        path.write_bytes(b"\0" * 7)
    restored, step = ckpt.restore(setup.abstract_state, _dummy_iterator())
    assert step == 1 and int(restored.step) == int(state.step)
    # Moved aside for inspection (orbax could not save step 2 again otherwise), and said so.
    assert not (directory / "2").exists() and ckpt.steps() == [1]
    (aside,) = (tmp_path / "corrupt_checkpoints").iterdir()
    assert aside.name.startswith("2-") and (aside / "state").is_dir()
    assert "checkpoint step 2 could not be read" in ckpt.notes[0] and "resumed from step 1" in ckpt.notes[0]
    ckpt.save(2, later, _dummy_iterator())  # The run can go on past step 2.
    ckpt.wait()
    assert ckpt.steps() == [1, 2]
    ckpt.close()


def test_params_only_restore_onto_a_different_mesh(tmp_path):
    state, _, _, _ = train_steps({"data": 2, "fsdp": 2, "tensor": 2}, num_steps=1)
    ckpt = checkpoint.Checkpointer(tmp_path, keep=2)
    ckpt.save(1, state, _dummy_iterator())
    ckpt.wait()
    mesh = sharding.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
    setup = make_setup(make_config(), mesh)
    params, step = ckpt.restore_params(setup.abstract_state.params)
    assert step == 1
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(SoraError, match=r"no checkpoint step 7 .* available: \[1\]"):
        ckpt.restore_params(setup.abstract_state.params, step=7)
    ckpt.close()
    with pytest.raises(SoraError, match="no checkpoint in"):
        checkpoint.Checkpointer(tmp_path / "empty", keep=1).restore_params(setup.abstract_state.params)


def test_training_loop_pulls_metrics_to_the_host_only_when_logging(tmp_path, tfds_dir, monkeypatch):
    from sora_jax.training import loop

    pulls = []
    real_device_get = jax.device_get

    def counting_device_get(tree):
        if sys._getframe(1).f_globals.get("__name__") == loop.__name__:  # Pulls by the training loop itself.
            pulls.append(1)
        return real_device_get(tree)

    monkeypatch.setattr(loop.jax, "device_get", counting_device_get)
    config = make_config(data=8)
    config.data.data_dir = str(tfds_dir)
    config.num_train_steps, config.log_every_steps = 12, 6
    config.eval_every_steps = config.checkpoint_every_steps = 100
    # Implicit device-to-host transfers (float(x), np.asarray(x)) raise; explicit device_get is counted.
    with jax.transfer_guard_device_to_host("disallow"):
        result = run(config, tmp_path)
    assert result.final_step == 12
    # One pull for the starting step, then one per log window (steps 6 and 12), not one per step.
    assert len(pulls) == 3


def test_copy_of_workdir_resumes_on_another_mesh(tmp_path, tfds_dir):
    config = make_config(data=2, fsdp=2, tensor=2)
    config.data.data_dir = str(tfds_dir)
    config.num_train_steps, config.checkpoint_every_steps = 6, 3
    config.optimizer.schedule = "constant"
    run(config, tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "6")
    other = make_config(data=8)
    other.data.data_dir = str(tfds_dir)
    other.num_train_steps, other.checkpoint_every_steps = 6, 3
    other.optimizer.schedule = "constant"
    result = run(other, tmp_path / "b")
    assert result.resumed_from == 3 and result.final_step == 6


def test_multi_slice_dcn_sizes_must_match_the_slices():
    # CPU devices are all one "slice": a dcn shape spanning two slices is refused with the reason.
    with pytest.raises(SoraError, match=r"spans 2 slices but the devices come from 1"):
        sharding.make_mesh({"data": 4, "fsdp": 2, "tensor": 1}, dcn={"data": 2})
    with pytest.raises(SoraError, match=r"must divide the mesh axes"):
        sharding.make_mesh({"data": 4, "fsdp": 2, "tensor": 1}, dcn={"fsdp": 4})
    mesh = sharding.make_mesh({"data": 4, "fsdp": 2, "tensor": 1}, dcn={"data": 1})
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
