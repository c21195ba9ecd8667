"""`config.init_from=hf:DIR`: a run starts from an imported Hugging Face T5 checkpoint (the committed fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from sora_jax import checkpoint
from sora_jax import config as config_lib
from sora_jax.errors import SoraError
from sora_jax.interop import load_hf_t5
from sora_jax.training.loop import run

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "hf_t5" / "t5_v1_0"


def fine_tune_config(tfds_dir: Path, init_from: str):
    config = config_lib.load_config_file(str(REPO / "configs" / "tiny.py"))
    config.data.data_dir = str(tfds_dir)
    config.init_from = init_from
    config.num_train_steps, config.log_every_steps, config.eval_every_steps = 1, 1, 100
    config.data.max_eval_examples = config.data.max_test_examples = 8
    # A vanishing learning rate: after one step the params must still be exactly the imported ones.
    config.optimizer.name, config.optimizer.learning_rate, config.optimizer.warmup_steps = "sgd", 1e-30, 0
    config.optimizer.momentum = 0.0
    return config


def test_run_starts_from_the_pretrained_params_architecture_and_tokenizer(tmp_path, tfds_dir):
    result = run(fine_tune_config(tfds_dir, f"hf:{FIXTURE}"), tmp_path)
    assert result.final_step == 1
    hf_config = json.loads((FIXTURE / "config.json").read_text())
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model"]["d_model"] == hf_config["d_model"] and saved["model"]["vocab_size"] == hf_config["vocab_size"]
    assert saved["tokenizer"]["model_path"] == str(FIXTURE / "spiece.model")
    state = checkpoint.read_as_numpy(tmp_path / "checkpoints" / "1" / "state")
    _, imported, _ = load_hf_t5(FIXTURE)
    leaves = jax.tree_util.tree_leaves_with_path(imported)
    assert len(leaves) == len(jax.tree.leaves(state["params"]))
    for path, leaf in leaves:
        saved_leaf = state["params"]
        for key in path:
            saved_leaf = saved_leaf[key.key]
        np.testing.assert_array_equal(np.asarray(saved_leaf), np.asarray(leaf))


def test_bad_init_from_is_refused_before_anything_runs(tmp_path, tfds_dir):
    with pytest.raises(SoraError, match="use hf:/path/to/dir"):
        run(fine_tune_config(tfds_dir, str(FIXTURE)), tmp_path / "a")
    with pytest.raises(SoraError, match="has no config.json"):
        run(fine_tune_config(tfds_dir, f"hf:{tmp_path}"), tmp_path / "b")
    assert not (tmp_path / "a" / "checkpoints").exists()


def test_export_of_a_fine_tuned_run_reimports_to_the_same_params(tmp_path, tfds_dir):
    from sora_jax.cli.export import main as export_main

    run(fine_tune_config(tfds_dir, f"hf:{FIXTURE}"), tmp_path / "run")
    assert export_main([f"--workdir={tmp_path / 'run'}", f"--out={tmp_path / 'hf'}"]) == 0
    config, params, tokenizer = load_hf_t5(tmp_path / "hf")
    assert tokenizer is not None and (tmp_path / "hf" / "spiece.model").read_bytes() == (
        FIXTURE / "spiece.model").read_bytes()
    saved = checkpoint.read_as_numpy(tmp_path / "run" / "checkpoints" / "1" / "state")["params"]
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert export_main([f"--workdir={tmp_path / 'run'}", f"--out={tmp_path / 'x'}", "--step=7"]) == 2
