"""Loading config files and applying `--config.KEY=VALUE` overrides; unknown keys get the closest known one."""

from __future__ import annotations

import ast
import importlib.util
import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from sora_jax.config.schema import FREE_FORM_KEYS, base_config
from sora_jax.errors import SoraError, closest


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Load `path/to/config.py[:arg]` by calling its `get_config(arg)`; every mistake in the file is one line."""
    path, _, arg = spec.partition(":")
    file = Path(path)
    if not file.is_file():
        raise SoraError(f"config file {path!r} does not exist; pass --config=configs/NAME.py (see configs/).")
    module_spec = importlib.util.spec_from_file_location(f"sora_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise SoraError(f"config file {path} has a syntax error at line {e.lineno}: {e.msg}; fix the file.") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise SoraError(f"config file {path} has no get_config() function; see configs/tiny.py.")
    takes_arg = bool(inspect.signature(get_config).parameters)
    if arg and not takes_arg:
        raise SoraError(f"config file {path}: get_config() takes no argument, but {spec!r} passes {arg!r}; use "
                        f"--config={path} without ':{arg}'.")
    config = get_config(arg or None) if takes_arg else get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise SoraError(f"config file {path}: get_config() returned {type(config).__name__}, not a ConfigDict; end "
                        "it with `return config` (see configs/tiny.py).")
    check_keys(config)
    return config


KEYS_HELP = "every key and its default is listed in sora_jax/config/schema.py:base_config() and in the README's table"


def _closest(name: str, known: Sequence[str]) -> str:
    match = closest(name, known)
    return f" Did you mean {match!r}?" if match else f" No key is close; {KEYS_HELP}."


def _flat_keys(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping | ml_collections.ConfigDict) and full not in FREE_FORM_KEYS:
            flat.update(_flat_keys(value, f"{full}."))
        else:
            flat[full] = value
    return flat


def check_keys(config: ml_collections.ConfigDict) -> None:
    """Raise SoraError for the first key that the schema does not know, with a suggestion."""
    known = _flat_keys(base_config())
    for key in _flat_keys(config):
        if key not in known:
            raise SoraError(f"unknown config key {key!r}.{_closest(key, list(known))}")


def _parse_value(key: str, value: Any, current: Any, kind: type | None) -> Any:
    """The override's value with the schema's type: command-line text is parsed, Python values are checked."""
    shown = value if isinstance(value, str) else repr(value)
    if kind is bool or isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no"):
            return False
        raise SoraError(f"--config.{key}={shown}: expected true or false.")
    if (kind is str or isinstance(current, str)) and isinstance(value, str):
        return value
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
    expected = kind or type(current)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is tuple and isinstance(value, list):
        value = tuple(value)
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        raise SoraError(f"--config.{key}={shown}: expected a value of type {expected.__name__}.")
    return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
    """Apply `--config.KEY=VALUE` overrides in place: values as typed on the command line (text, parsed to the
    schema's type) or Python values (checked against it)."""
    known = _flat_keys(base_config())
    for key, value in overrides.items():
        parent_key, _, leaf = key.rpartition(".")
        if parent_key in FREE_FORM_KEYS:
            parent = config
            for part in parent_key.split("."):
                parent = parent[part]
            if isinstance(value, str):
                try:
                    value = ast.literal_eval(value)
                except (ValueError, SyntaxError):
                    pass
            parent[leaf] = value
            continue
        if key not in known:
            raise SoraError(f"unknown config key {key!r}.{_closest(key, list(known))}")
        parent = config
        for part in key.split(".")[:-1]:
            parent = parent[part]
        field = parent.get_ref(leaf) if hasattr(parent, "get_ref") else None
        kind = field.get_type() if field is not None else None
        parent[leaf] = _parse_value(key, value, parent[leaf], kind)


