"""The teacher of knowledge distillation (`config.distill.teacher`): resolved and checked before any compile, its
params restored onto the run's mesh.

The teacher has its own architecture (a larger model, say) but shares the student's tokenizer and vocabulary: the
student takes the teacher's tokenizer, as `init_from` does. Its params are an argument of the train step, never
updated, never part of the optimizer state and never checkpointed (a resumed run restores them again).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import ml_collections
from jax.sharding import Mesh

from sora_jax import paths
from sora_jax.errors import SoraError
from sora_jax.model import EncoderDecoder, ModelConfig
from sora_jax.model import params as params_lib
from sora_jax.training import pretrained

WHAT = "config.distill.teacher"


@dataclasses.dataclass(frozen=True)
class Teacher:
    """The teacher model, where its params go on the run's mesh, and the distillation settings."""

    spec: str
    model: EncoderDecoder
    abstract_params: Any  # ShapeDtypeStructs carrying their shardings.
    param_shardings: Any
    temperature: float
    alpha: float


@contextlib.contextmanager
def _named(spec: str) -> Iterator[None]:
    # The source's own messages talk about --workdir or init_from: say that the teacher is meant.
    try:
        yield
    except SoraError as e:
        text = str(e)
        raise SoraError(text if text.startswith(WHAT) else f"{WHAT}={spec!r}: {text}") from None


def _same_file(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return paths.as_path(a).read_bytes() == paths.as_path(b).read_bytes()
    except OSError:
        return False


def resolve_teacher(config: ml_collections.ConfigDict) -> ModelConfig | None:
    """The teacher's ModelConfig (None without distillation), after checking its checkpoint exists; fills
    `config.tokenizer` and `config.model.vocab_size` from the teacher, in place, refusing contradictions."""
    spec = config.distill.teacher
    if not spec:
        return None
    with _named(spec):
        source = pretrained.describe_source(spec, config.model, WHAT)
    tokenizer = config.tokenizer
    if tokenizer.model_path and not _same_file(tokenizer.model_path, source.tokenizer_path):
        origin = "the init_from source" if config.init_from else "config.tokenizer.model_path"
        raise SoraError(f"{WHAT}={spec!r} was trained with the tokenizer {source.tokenizer_path}, but {origin} uses "
                        f"{tokenizer.model_path}: a student shares its teacher's vocabulary; leave "
                        "config.tokenizer.model_path unset.")
    if config.init_from and tokenizer.extra_ids != source.extra_ids:
        raise SoraError(f"{WHAT}={spec!r} has {source.extra_ids} sentinel ids but the init_from source has "
                        f"{tokenizer.extra_ids}: a student shares its teacher's vocabulary.")
    vocab = source.model_config.vocab_size
    if config.model.vocab_size is not None and config.model.vocab_size != vocab:
        raise SoraError(f"{WHAT}={spec!r} has a vocabulary of {vocab} but the student's config.model.vocab_size is "
                        f"{config.model.vocab_size}: a student shares its teacher's vocabulary; leave it unset.")
    tokenizer.model_path, tokenizer.extra_ids = source.tokenizer_path, source.extra_ids
    config.model.vocab_size = vocab
    return source.model_config


def teacher_setup(distill: ml_collections.ConfigDict, teacher_config: ModelConfig, student_config: ModelConfig,
                  mesh: Mesh, rules: Any) -> Teacher:
    """The teacher model and its params' shardings on `mesh` (nothing allocated)."""
    if teacher_config.vocab_size != student_config.vocab_size:
        raise SoraError(f"{WHAT}={distill.teacher!r} has a vocabulary of {teacher_config.vocab_size}, the student "
                        f"{student_config.vocab_size}: a student shares its teacher's vocabulary.")
    model = EncoderDecoder(dataclasses.replace(teacher_config, dropout_rate=0.0))
    abstract, shardings = params_lib.abstract_params(params_lib.init_fn(model), mesh, rules)
    return Teacher(distill.teacher, model, abstract, shardings, float(distill.temperature), float(distill.alpha))


def load_teacher_params(teacher: Teacher) -> Any:
    """The teacher's params, each placed directly on its shard of the run's mesh."""
    with _named(teacher.spec):
        return pretrained.load_pretrained_params(teacher.spec, teacher.model.config, teacher.param_shardings)
