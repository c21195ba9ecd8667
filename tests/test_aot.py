"""Ahead-of-time compilation for Cloud TPU slices on this CPU-only machine (libtpu's compiler, topology devices):
per-chip shardings, the compiler's memory figures, collectives, one-line refusals, and saved executables."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from sora_jax import sharding
from sora_jax.aot import collectives, report, topology
from sora_jax.aot import compile as compile_lib
from sora_jax.cli.train import main
from sora_jax.config import base_config
from sora_jax.errors import SoraError
from sora_jax.model import params as params_lib
from sora_jax.training import executable, oom
from sora_jax.training import state as state_lib
from sora_jax.training.dry_run import step_inputs

pytest.importorskip("libtpu", reason="AOT compilation for TPU needs libtpu (the test extra installs jax[tpu])")


def small_config(**overrides):
    """A model whose dimensions tile the TPU's (8, 128) layout, so the compiler's byte counts are Sora's."""
    config = base_config()
    config.model.preset = "tiny"
    for key, value in dict(d_model=128, d_ff=256, num_heads=2, d_kv=64).items():
        config.model[key] = value
    config.model.scan_layers = True
    config.model.remat_policy = "full"
    config.tokenizer.vocab_size, config.tokenizer.extra_ids = 512, 0
    config.data.max_input_length, config.data.max_target_length = 32, 8
    config.batch_size = config.data.eval_batch_size = 16
    config.mesh.data, config.mesh.fsdp = 1, -1
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (config[section] if section else config)[name] = value
    return config


def _inputs(config, name, num_slices=1):
    target = topology.resolve(name, num_slices)
    mesh = compile_lib.target_mesh(config.mesh, topology.devices(target), target.num_slices)
    return target, step_inputs(config, mesh)


@pytest.mark.parametrize("name", ["v5litepod-4", "v5p:2x2x1"])
def test_params_per_chip_are_the_fsdp_share(name):
    target, inputs = _inputs(small_config(), name)
    assert dict(inputs.mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 1}
    assert inputs.mesh.devices.flat[0].device_kind == target.chip.device_kind
    params = inputs.setup.abstract_state.params
    sharded = [leaf for leaf in jax.tree.leaves(params) if "fsdp" in jax.tree.leaves(tuple(leaf.sharding.spec))]
    replicated = [leaf for leaf in jax.tree.leaves(params) if leaf not in sharded]
    # Every weight matrix is split 4 ways; only the small norm scales and position biases are whole on each chip.
    assert params_lib.tree_bytes(sharded) > 20 * params_lib.tree_bytes(replicated)
    expected = params_lib.tree_bytes(sharded) // 4 + params_lib.tree_bytes(replicated)
    assert params_lib.tree_bytes(params, per_device=True) == expected


def test_two_slice_v5e_compile_reports_memory_collectives_and_the_decode_step(capsys):
    target, inputs = _inputs(small_config(**{"mesh.data": 2, "mesh.dcn_data": 2}), "v5litepod-4", num_slices=2)
    assert dict(inputs.mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert {d.slice_index for d in inputs.mesh.devices[0].flat} != {d.slice_index for d in inputs.mesh.devices[1].flat}
    train = compile_lib.compile_train_step(inputs)
    figures = report.train_report(target, inputs, train.executable, train.seconds,
                                             train.assigned_temp_bytes)
    memory = figures["memory"]
    state_bytes = figures["param_bytes_per_chip"] + figures["opt_bytes_per_chip"]
    # The compiler's arguments are Sora's sharded state (a quarter of the whole), the batch shard and the RNG key,
    # small arrays padded to the TPU's (8, 128) tiles.
    assert state_bytes <= memory.argument <= state_bytes * 1.5
    assert 0 < memory.total < target.chip.hbm_bytes and memory.headroom == target.chip.hbm_bytes - memory.total
    # The HBM the buffer assignment reserves for temporaries: no more than memory_analysis says (which also counts
    # on-chip scratch).
    assert 0 < memory.assigned_temp <= memory.temp
    found = {(c.kind, c.network): c for c in figures["collectives"]}
    # FSDP gathers the weights inside each slice (a bf16 copy of every matrix at least once); data parallelism sums
    # the gradient shards across the slices (DCN), at least once per chip's f32 share of the params.
    whole_bytes = params_lib.tree_bytes(inputs.setup.abstract_state.params)
    gathered, summed = found[("all-gather", "ICI")].payload_bytes, found[("all-reduce", "DCN")].payload_bytes
    assert whole_bytes / 2 * 0.9 <= gathered <= whole_bytes * 4, (gathered, whole_bytes)
    assert figures["param_bytes_per_chip"] * 0.9 <= summed <= figures["param_bytes_per_chip"] * 3, summed
    assert figures["estimate"].dcn_s > 0 and 0 < figures["estimate"].mfu_bound <= 1
    out = capsys.readouterr().out
    assert "per chip, from the compiler" in out and "all-reduce         DCN" in out

    decode = compile_lib.compile_decode_step(inputs)
    decode_memory = report.Memory.of(decode.executable, target.chip.hbm_bytes)
    assert figures["param_bytes_per_chip"] <= decode_memory.argument < state_bytes


def test_a_model_that_cannot_fit_is_one_line(tmp_path, capsys):
    # A 4M x 1024 float32 embedding (16 GiB) replicated on each v5e chip (15.75 GiB usable).
    status = main(["--config=configs/tiny.py", f"--workdir={tmp_path}", "--dry_run", "--topology=v5litepod-4",
                   "--config.mesh.data=4", "--config.mesh.fsdp=1", "--config.model.d_model=1024",
                   "--config.tokenizer.vocab_size=4194304", "--config.tokenizer.extra_ids=0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    assert err[0].startswith("error: the train step does not fit in a TPU v5 lite chip's memory: it needs ")
    assert "and the chip has 15.75G" in err[0] and "config.mesh.fsdp" in err[0] and "remat_policy" in err[0]


def test_unknown_topology_and_unmappable_mesh_are_one_line(tmp_path, capsys):
    assert main(["--config=configs/tiny.py", f"--workdir={tmp_path}", "--dry_run", "--topology=v5p-12"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown TPU topology 'v5p-12'") and "v5litepod-16" in err[0]
    target = topology.resolve("v5p:4x4x8")
    assert target.num_chips == 128 and topology.resolve("v5p-256").shape == (4, 4, 8)
    with pytest.raises(SoraError, match=r"cannot be laid onto the 4x4x8 physical axes"):
        sharding.make_mesh({"data": 2, "fsdp": 64, "tensor": 1}, topology.devices(target))


def test_oom_messages_name_the_need_and_the_fixes():
    error = RuntimeError("RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: Ran out of memory on HBM, the total memory "
                         "required for HLO temporaries (15.80G) exceeds available HBM (15.75G). HLO module: x.")
    line = oom.message(error, "the train step", "TPU v5 lite")
    assert "needs 15.80G for HLO temporaries per chip and the chip has 15.75G" in line and "\n" not in line
    runtime = RuntimeError("RESOURCE_EXHAUSTED: Error allocating device buffer: Attempting to allocate 2.00G.")
    wrapped = oom.one_line_oom(lambda: (_ for _ in ()).throw(runtime), "the train step", "TPU v5")
    with pytest.raises(SoraError, match=r"the train step ran out of TPU v5 memory \(Error allocating device buffer"):
        wrapped()


def test_a_saved_executable_loads_back_and_a_mismatched_one_is_refused(tmp_path):
    # CPU targets: an executable compiled for the local (fake CPU) devices, saved, loaded and run.
    config = small_config(**{"mesh.fsdp": 2, "model.scan_layers": False, "model.remat_policy": "none"})
    inputs = step_inputs(config, sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 1}, jax.devices()[:2]))
    compiled = inputs.compile()
    manifest = executable.Manifest.for_run(inputs.config, inputs.mesh)
    executable.save(compiled, str(tmp_path / "step"), manifest)
    loaded = executable.load(str(tmp_path / "step"), executable.Manifest.for_run(inputs.config, inputs.mesh),
                             inputs.mesh)
    setup = inputs.setup
    state = state_lib.init_train_state(setup.init_params, setup.tx, setup.state_shardings, 0, setup.rng_impl)
    rng = np.random.default_rng(0)
    batch = {k: jax.device_put(rng.integers(1, 100, v.shape, dtype=np.int32), v.sharding)
             for k, v in inputs.arguments[1].items()}
    batch["encoder_segment_ids"] = jax.device_put(np.ones_like(batch["encoder_segment_ids"]), inputs.arguments[1][
        "encoder_segment_ids"].sharding)
    batch["decoder_segment_ids"] = jax.device_put(np.ones((16, 8), np.int32), inputs.arguments[1][
        "decoder_segment_ids"].sharding)
    expected_state, expected = compiled(state, batch)
    state = state_lib.init_train_state(setup.init_params, setup.tx, setup.state_shardings, 0, setup.rng_impl)
    got_state, got = loaded(state, batch)
    assert float(got["loss"]) == float(expected["loss"]) > 0
    np.testing.assert_array_equal(jax.tree.leaves(got_state.params)[0], jax.tree.leaves(expected_state.params)[0])

    changed = config.copy_and_resolve_references()
    changed.batch_size = 32
    with pytest.raises(SoraError, match=r"was made for the step's config keys .* \(this run: "):
        executable.load(str(tmp_path / "step"), executable.Manifest.for_run(changed, inputs.mesh), inputs.mesh)
    newer = dataclasses.replace(manifest, libtpu="9.9.9")
    with pytest.raises(SoraError, match=r"was made for libtpu .* \(this run: 9\.9\.9\)"):
        executable.load(str(tmp_path / "step"), newer, inputs.mesh)


def test_collective_groups_in_every_replica_group_notation():
    devices = [type("D", (), {"slice_index": i // 4})() for i in range(8)]
    hlo = "\n".join([
        "ENTRY %main (p: f32[4]) -> f32[4] {",
        "  %a = f32[256]{0} all-reduce(%p), channel_id=1, replica_groups={{0,4},{1,5},{2,6},{3,7}}, to_apply=%add",
        "  %b = bf16[1024]{0} all-gather(%p), channel_id=2, replica_groups=[2,4]<=[8], dimensions={0}",
        "  %w = (s32[]) while(%t), condition=%cond, body=%body, backend_config={\"known_trip_count\":{\"n\":\"12\"}}",
        "}",
        "%body (q: f32[4]) -> f32[4] {",
        "  %c = bf16[512]{0} all-gather(%q), channel_id=3, replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}",
        "}",
    ])
    found = {(c.kind, c.network): c for c in collectives.collectives(hlo, devices, 100.0, 10.0)}
    assert found[("all-reduce", "DCN")].payload_bytes == 1024  # groups {0,4}: one chip in each slice
    gather = found[("all-gather", "ICI")]
    assert gather.count == 1 + 12 and gather.payload_bytes == 2048 + 12 * 1024  # the loop body runs 12 times
    assert gather.traffic_bytes == pytest.approx(gather.payload_bytes * 3 / 4)


def test_a_gpu_target_reports_memory_per_device_and_refuses_what_exceeds_the_card(capsys):
    pytest.importorskip("jax_plugins.xla_cuda12", reason="GPU targets need the CUDA PJRT plugin (the cuda extra)")
    from sora_jax.aot.dry_run import dry_run_on_topology

    result = dry_run_on_topology(small_config(), "h100x2")
    memory = result["memory"]
    assert 79 * 2**30 < memory.hbm < 80 * 2**30  # XLA's H100 SXM description
    assert 0 < memory.total < memory.hbm
    assert "memory only" in capsys.readouterr().out
    # An 8M-row embedding and LM head (32 GiB each in float32) with their AdamW moments, on every card.
    too_big = small_config(**{"model.d_model": 1024, "mesh.fsdp": 1, "mesh.data": -1,
                              "tokenizer.vocab_size": 8 * 2**20})
    with pytest.raises(SoraError, match=r"does not fit in a NVIDIA H100 80GB HBM3's memory: it needs"):
        dry_run_on_topology(too_big, "h100x2")
