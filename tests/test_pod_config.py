"""configs/t5_c4.py, the pod pretraining config: its --dry_run on 8 fake CPU devices (no data, no tokenizer
download) shows T5 v1.1 base fully sharded over the devices and compiles its train step."""

from __future__ import annotations

from pathlib import Path

import jax

from sora_jax import config as config_lib
from sora_jax.training.dry_run import dry_run

REPO = Path(__file__).resolve().parents[1]


def test_t5_c4_dry_run_shards_base_over_eight_devices(capsys):
    assert jax.device_count() == 8
    config = config_lib.load_config_file(str(REPO / "configs" / "t5_c4.py"))
    # The vocabulary lives in a bucket: size it without reading it (32,000 pieces + 100 sentinels, padded).
    config_lib.apply_overrides(config, {"tokenizer.model_path": "", "tokenizer.vocab_size": 32000,
                                        "batch_size": 8})
    config_lib.validate(config)
    result = dry_run(config)
    out = capsys.readouterr().out
    assert "mesh: {'data': 1, 'fsdp': 8, 'tensor': 1}" in out
    assert 247_000_000 < result["params"] < 249_000_000  # T5 v1.1 base with its 32,128-row embedding.
    # FSDP: each device holds an eighth of the float32 params (and of the Adafactor state).
    assert abs(result["param_bytes_per_device"] - result["params"] * 4 / 8) < 0.01 * result["params"] * 4 / 8
    assert "batch: 8 rows x (512 + 114) tokens" in out
