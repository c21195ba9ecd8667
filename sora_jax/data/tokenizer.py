"""SentencePiece tokenizer: train one from a task's training text, or load an existing `.model` file.

Ids follow T5: 0 = padding (also the decoder start), 1 = end of sequence, 2 = unknown. Byte fallback is on so
that no character is ever unknown, which matters for Chinese text with rare characters.

Sentinels follow T5 too: a model file with P pieces gets `extra_ids` more ids after them, numbered downwards:
`<extra_id_0>` is the highest id (P + extra_ids - 1), `<extra_id_N>` is P + extra_ids - 1 - N. Hugging Face's T5
tokenizer numbers T5/mT5/Flan-T5 `spiece.model` files the same way, so imported models keep their ids.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

from sora_jax.errors import SoraError

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
WORD_BOUNDARY = "\u2581"  # sentencepiece's mark of a space before a piece


class Tokenizer:
    """A SentencePiece model with T5 special ids and sentinels; encodes to id lists without EOS, decodes up to EOS."""

    def __init__(self, model_proto: bytes, path: str = "<memory>", extra_ids: int = 100):
        self.path = path
        if not isinstance(extra_ids, int) or isinstance(extra_ids, bool) or extra_ids < 0:
            raise SoraError(f"extra_ids={extra_ids!r} must be a whole number >= 0 (T5 uses 100 sentinels).")
        self.extra_ids = extra_ids
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
    def load(cls, path: str | Path, extra_ids: int = 100) -> Tokenizer:
        """Load a `.model` file and add `extra_ids` sentinel ids after its pieces."""
        file = Path(path)
        if not file.is_file():
            raise SoraError(f"tokenizer model {path} does not exist; fix config.tokenizer.model_path or leave it "
                            "empty to train one.")
        return cls(file.read_bytes(), str(file), extra_ids=extra_ids)

    @property
    def num_pieces(self) -> int:
        """Pieces in the sentencepiece model (ids below this have text)."""
        return self._sp.get_piece_size()

    @property
    def vocab_size(self) -> int:
        """Pieces plus sentinel ids: the smallest embedding that holds every id this tokenizer makes."""
        return self.num_pieces + self.extra_ids

    def sentinel_id(self, n: int) -> int:
        """The id of `<extra_id_n>` (T5 numbering: `<extra_id_0>` is the highest id)."""
        if self.extra_ids == 0:
            raise SoraError(f"tokenizer {self.path} has no sentinel ids (extra_ids=0); span corruption needs them: "
                            "load it with extra_ids=100.")
        if not 0 <= n < self.extra_ids:
            raise SoraError(f"<extra_id_{n}> does not exist: tokenizer {self.path} has {self.extra_ids} sentinels "
                            f"(<extra_id_0>..<extra_id_{self.extra_ids - 1}>).")
        return self.vocab_size - 1 - n

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (no EOS appended)."""
        return self._sp.encode(list(texts), out_type=int)

    def decode(self, ids: Iterable[Sequence[int]] | np.ndarray, show_sentinels: bool = False) -> list[str]:
        """Texts of each id row; each row is cut at its first EOS; padding and ids without text are dropped.

        Sentinel ids have no text, so a prediction never shows one by accident; `show_sentinels=True` renders
        them as `<extra_id_N>` (to show pretraining examples). Ids past the sentinels are always dropped.
        """
        texts = []
        for row in ids:
            row = [int(t) for t in row]
            if EOS_ID in row:
                row = row[: row.index(EOS_ID)]
            if show_sentinels:
                texts.append(self._decode_with_sentinels(row))
            else:
                # Ids past the pieces are sentinels or the model's padded embedding rows: they have no text.
                texts.append(self._sp.decode([t for t in row if t != PAD_ID and t < self.num_pieces]))
        return texts

    def model_proto(self) -> bytes:
        """The serialized sentencepiece model (what a `.model` file holds)."""
        return self._sp.serialized_model_proto()

    def _decode_with_sentinels(self, row: list[int]) -> str:
        parts: list[str] = []
        pieces: list[int] = []

        def flush() -> None:
            if pieces:
                text = self._sp.decode(pieces)
                # sentencepiece drops the leading word-boundary space of a text; after a sentinel it is real.
                if parts and self._sp.id_to_piece(pieces[0]).startswith(WORD_BOUNDARY):
                    text = " " + text
                parts.append(text)
                pieces.clear()

        for t in row:
            if t == PAD_ID or t >= self.vocab_size:
                continue
            if t < self.num_pieces:
                pieces.append(t)
            else:
                flush()
                parts.append(f"<extra_id_{self.vocab_size - 1 - t}>")
        flush()
        return "".join(parts)


def train_tokenizer(texts: Iterable[str], *, vocab_size: int, model_type: str = "unigram",
                    character_coverage: float = 0.9995, max_sentences: int = 1_000_000, seed: int = 0,
                    user_defined_symbols: Sequence[str] = (), extra_ids: int = 100) -> Tokenizer:
    """Train a SentencePiece model on `texts` (inputs and targets together) in memory.

    `vocab_size` counts the sentencepiece pieces only; the tokenizer adds `extra_ids` sentinels after them (as
    `Tokenizer.load` does, so a saved and reloaded tokenizer has the same ids). `user_defined_symbols` (e.g. UL2's
    mode tokens "[NLU]", "[NLG]", "[S2S]") become single pieces that are never split.
    """
    sentences = [t for t in texts if t.strip()]
    if not sentences:
        raise SoraError("no text to train the tokenizer on: the training split is empty.")
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)  # Sentence sampling is random: fix it so runs are reproducible.
    # Label words like "positive" occur thousands of times, so they become single pieces and decode in one step.
    try:
        _train_into(model, sentences, vocab_size, model_type, character_coverage, max_sentences,
                    list(user_defined_symbols))
    except RuntimeError as e:
        raise SoraError(f"sentencepiece training failed: {e}. With byte fallback the vocabulary needs at least "
                        "259 + the number of distinct characters; raise config.tokenizer.vocab_size.") from e
    return Tokenizer(model.getvalue(), extra_ids=extra_ids)


def _train_into(model: io.BytesIO, sentences: list[str], vocab_size: int, model_type: str,
                character_coverage: float, max_sentences: int, user_defined_symbols: list[str]) -> None:
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
        user_defined_symbols=user_defined_symbols,
    )
