"""The saved run config (`<workdir>/config.json`): written as JSON, read back on top of the schema."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import ml_collections

from sora_jax.config.schema import FREE_FORM_KEYS, base_config
from sora_jax.errors import SoraError


def to_json(config: ml_collections.ConfigDict, **extra: Any) -> str:
    """The config (plus `extra` top-level entries) as JSON text, readable by people and by `from_saved`."""
    return json.dumps({**extra, **config.to_dict()}, indent=2, sort_keys=True, default=list) + "\n"


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def _overlay(config: ml_collections.ConfigDict, saved: Mapping[str, Any], prefix: str, source: str,
             notes: list[str]) -> None:
    for key, value in saved.items():
        full = f"{prefix}{key}"
        if key not in config:
            notes.append(f"{source} key {full!r} is not a config key of this version of Sora; ignored.")
            continue
        current = config[key]
        if full in FREE_FORM_KEYS:
            config[key] = ml_collections.ConfigDict(value or {})
        elif isinstance(current, ml_collections.ConfigDict):
            if not isinstance(value, Mapping):
                raise SoraError(f"{source} has {full}={value!r} where a group of keys is expected; restore it from "
                                "the training run.")
            _overlay(current, value, f"{full}.", source, notes)
        else:
            if isinstance(current, tuple):
                value = _to_tuples(value)
            try:
                config[key] = value
            except TypeError as e:
                raise SoraError(f"{source} has {full}={value!r}, of the wrong type ({e}); restore it from the "
                                "training run.") from e


def from_saved(saved: Mapping[str, Any], source: str) -> tuple[ml_collections.ConfigDict, list[str]]:
    """A saved config (the dict of `to_json`) on top of the schema, with the schema's types (JSON lists become
    tuples where the schema has tuples); keys this version does not know are skipped with a note."""
    notes: list[str] = []
    config = base_config()
    _overlay(config, saved, "", source, notes)
    return config, notes


