"""SentencePiece tokenizer: train one from a task's training text, or load an existing `.model` file.

Ids follow T5: 0 = padding (also the decoder start), 1 = end of sequence, 2 = unknown. Byte fallback is on so
that no character is ever unknown, which matters for Chinese text with rare characters.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

from sora_jax.errors import SoraError

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2


class Tokenizer:
    """A SentencePiece model with T5 special ids; encodes to id lists without EOS, decodes up to EOS."""

    def __init__(self, model_proto: bytes, path: str = "<memory>"):
        self.path = path
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_proto)
        except (RuntimeError, OSError) as e:
            raise SoraError(f"{path} is not a valid sentencepiece model ({e}); point "
                            "config.tokenizer.model_path to a .model file or clear it to train one.") from e
        if self._sp.pad_id() != PAD_ID or self._sp.eos_id() != EOS_ID:
            raise SoraError(f"{path}: sentencepiece model has pad id {self._sp.pad_id()} and eos id "
                            f"{self._sp.eos_id()}; Sora needs pad=0 and eos=1 (as T5's spiece.model has).")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load a `.model` file."""
        file = Path(path)
        if not file.is_file():
            raise SoraError(f"tokenizer model {path} does not exist; fix config.tokenizer.model_path or leave it "
                            "empty to train one.")
        return cls(file.read_bytes(), str(file))

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (no EOS appended)."""
        return self._sp.encode(list(texts), out_type=int)

    def decode(self, ids: Iterable[Sequence[int]] | np.ndarray) -> list[str]:
        """Texts of each id row; each row is cut at its first EOS; padding and out-of-vocabulary ids are dropped."""
        texts = []
        for row in ids:
            row = [int(t) for t in row]
            if EOS_ID in row:
                row = row[: row.index(EOS_ID)]
            # Ids past the vocabulary come from the model's padded embedding rows: they have no text.
            texts.append(self._sp.decode([t for t in row if t != PAD_ID and t < self.vocab_size]))
        return texts

    def model_proto(self) -> bytes:
        """The serialized sentencepiece model (what a `.model` file holds)."""
        return self._sp.serialized_model_proto()

    def save(self, path: Path) -> None:
        """Copy the model file to `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.path != str(path):
            if Path(self.path).is_file():
                shutil.copyfile(self.path, path)
            else:
                path.write_bytes(self._sp.serialized_model_proto())


def train_tokenizer(texts: Iterable[str], *, vocab_size: int, model_type: str = "unigram",
                    character_coverage: float = 0.9995, max_sentences: int = 1_000_000,
                    seed: int = 0) -> Tokenizer:
    """Train a SentencePiece model on `texts` (inputs and targets together) in memory."""
    sentences = [t for t in texts if t.strip()]
    if not sentences:
        raise SoraError("no text to train the tokenizer on: the training split is empty.")
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)  # Sentence sampling is random: fix it so runs are reproducible.
    # Label words like "positive" occur thousands of times, so they become single pieces and decode in one step.
    try:
        _train_into(model, sentences, vocab_size, model_type, character_coverage, max_sentences)
    except RuntimeError as e:
        raise SoraError(f"sentencepiece training failed: {e}. With byte fallback the vocabulary needs at least "
                        "259 + the number of distinct characters; raise config.tokenizer.vocab_size.") from e
    return Tokenizer(model.getvalue())


def _train_into(model: io.BytesIO, sentences: list[str], vocab_size: int, model_type: str,
                character_coverage: float, max_sentences: int) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences[:max_sentences]),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        byte_fallback=True,
        pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
        hard_vocab_limit=False,  # Small corpora (tests, tiny datasets) may not support the full vocab size.
        input_sentence_size=0,  # The caller already capped the sentences; sentencepiece rejects small caps.
        # Identity normalization: decoded text must equal the original (full-width Chinese punctuation
        # included), or exact match and BLEU against raw targets would be wrong.
        normalization_rule_name="identity",
        num_threads=2,
        minloglevel=2,
        max_sentence_length=1 << 14,
    )
