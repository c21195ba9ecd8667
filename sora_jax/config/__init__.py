"""Run configuration, in four parts: the schema (`schema`), config files and overrides (`loading`), the value
checks (`checks`) and the saved run config (`saved`). Configuration enters here, is validated once, and deeper
layers take typed options built from it."""

from sora_jax.config.checks import parse_profile_steps, validate
from sora_jax.config.loading import KEYS_HELP, apply_overrides, check_keys, load_config_file
from sora_jax.config.saved import from_saved, to_json
from sora_jax.config.schema import (
    DEFAULT_LOGICAL_AXIS_RULES,
    FREE_FORM_KEYS,
    MODEL_FIELDS,
    SHAPE_FIELDS,
    VOCAB_MULTIPLE,
    base_config,
    resolve_model_config,
)

__all__ = [
    "DEFAULT_LOGICAL_AXIS_RULES", "FREE_FORM_KEYS", "KEYS_HELP", "MODEL_FIELDS", "SHAPE_FIELDS", "VOCAB_MULTIPLE",
    "apply_overrides", "base_config", "check_keys", "from_saved", "load_config_file", "parse_profile_steps",
    "resolve_model_config", "to_json", "validate",
]
