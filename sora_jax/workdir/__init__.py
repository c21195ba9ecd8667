"""The run directory: the seam between training and serving (evaluation, prediction, export)."""

from sora_jax.workdir.directory import BEST, Workdir, load_tokenizer_file, tokenizer_texts
from sora_jax.workdir.loaded import LoadedRun, load_workdir

__all__ = ["BEST", "LoadedRun", "Workdir", "load_tokenizer_file", "load_workdir", "tokenizer_texts"]
