"""Synthetic text pairs for throughput runs and smoke tests without any corpus.

Inputs are random "words" (`w0` ... `w{V-1}`); the target is the input's first words in reverse order, so a
model can learn it and a falling loss still means something. Sizes are options, and each combination of
them is its own TFDS config (so two settings never share prepared files).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from sora_jax.data.builders import _common
from sora_jax.errors import SoraError


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
    """num_examples: training examples (validation and test get 1/20 each); words per input and target."""

    num_examples: int = 20_000
    input_words: int = 48
    target_words: int = 8
    vocab_words: int = 1000


class SyntheticPairs(tfds.core.GeneratorBasedBuilder):
    """{"inputs": Text, "targets": Text} of random words, generated from a fixed seed."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = _common.module_code_path(__file__)
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def __init__(self, *, num_examples: int = 20_000, input_words: int = 48, target_words: int = 8,
                 vocab_words: int = 1000, **kwargs: Any):
        sizes = (num_examples, input_words, target_words, vocab_words)
        if min(sizes) < 1 or target_words > input_words:
            raise SoraError(f"synthetic task options {sizes} must be positive with target_words <= "
                            "input_words; fix config.data.task_options.")
        kwargs.setdefault("config", SyntheticConfig(
            name=f"n{num_examples}_in{input_words}_out{target_words}_v{vocab_words}", num_examples=num_examples,
            input_words=input_words, target_words=target_words, vocab_words=vocab_words))
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Random-word inputs; targets are the first words reversed.",
            features=tfds.features.FeaturesDict({"inputs": tfds.features.Text(), "targets": tfds.features.Text()}),
            supervised_keys=("inputs", "targets"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager
        held_out = max(self.builder_config.num_examples // 20, 1)
        sizes = {"train": self.builder_config.num_examples, "validation": held_out, "test": held_out}
        return {name: self._generate_examples(size, seed) for seed, (name, size) in enumerate(sizes.items())}

    def _generate_examples(self, size: int, seed: int):
        cfg = self.builder_config
        rng = np.random.default_rng(seed)
        for i in range(size):
            words = [f"w{j}" for j in rng.integers(0, cfg.vocab_words, cfg.input_words)]
            yield i, {"inputs": " ".join(words), "targets": " ".join(reversed(words[: cfg.target_words]))}
