"""SentencePiece tokenizer: training, T5 special ids, byte fallback, decoding rules, save/load."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from sora_jax.data.tokenizer import EOS_ID, PAD_ID, UNK_ID, Tokenizer, train_tokenizer
from sora_jax.errors import SoraError

BYTE_OFFSET = 3  # Byte pieces <0x00>..<0xFF> follow <pad>, </s>, <unk>.

# Sentences made of the training corpus' characters and words only.
SENTENCES = [
    "我们的家好",
    "你们看这个",
    "the hotel room was clean and good",
    "we will come to this hotel",
    "中国 people 好",  # mixed scripts
    "天地人",
]
# Text with characters the tokenizer never saw (byte fallback).
UNSEEN = ["我们的房间很好", "龘靐齉", "猫喜欢鱼", "café naïve", "emoji 😀 ok", "Zebra QUIZ"]


def test_special_ids(tokenizer):
    assert (PAD_ID, EOS_ID, UNK_ID) == (0, 1, 2)
    sp = tokenizer._sp
    assert [sp.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    assert sp.pad_id() == 0 and sp.eos_id() == 1 and sp.unk_id() == 2 and sp.bos_id() == -1
    assert [sp.id_to_piece(BYTE_OFFSET + b) for b in (0, 0x41, 0xFF)] == ["<0x00>", "<0x41>", "<0xFF>"]
    assert 259 + 2 < tokenizer.num_pieces <= 600
    assert tokenizer.num_pieces == sp.get_piece_size() and tokenizer.vocab_size == tokenizer.num_pieces + 100


@pytest.mark.parametrize("text", SENTENCES + UNSEEN)
def test_round_trip(tokenizer, text):
    ids = tokenizer.encode([text])[0]
    assert ids and all(isinstance(i, int) for i in ids)
    assert all(3 <= i < tokenizer.num_pieces for i in ids)  # never pad, eos, unknown or a sentinel
    assert tokenizer.decode([ids]) == [text]


def test_round_trip_training_corpus(tokenizer, corpus):
    ids = tokenizer.encode(corpus)
    assert len(ids) == len(corpus)
    assert tokenizer.decode(ids) == corpus
    assert UNK_ID not in {i for row in ids for i in row}


def test_known_text_uses_pieces_not_bytes(tokenizer, alphabet):
    zh_chars, en_words = alphabet
    for text in SENTENCES:
        assert all(c in zh_chars for c in text.replace(" ", "") if ord(c) > 127)
        assert all(w in en_words for w in text.split() if w.isascii())
        ids = tokenizer.encode([text])[0]
        assert all(i >= BYTE_OFFSET + 256 for i in ids), text
        assert len(ids) < len(text.encode())


@pytest.mark.parametrize("char", ["龘", "猫", "é", "😀", "Z"])
def test_byte_fallback_of_unseen_character(tokenizer, corpus, char):
    assert char not in "".join(corpus)
    ids = tokenizer.encode([f"的{char}的"])[0]
    # "的" is a piece; the unseen character is spelt as its UTF-8 bytes, each byte b as id 3 + b.
    byte_ids = [BYTE_OFFSET + b for b in char.encode("utf-8")]
    assert UNK_ID not in ids
    assert any(ids[i:i + len(byte_ids)] == byte_ids for i in range(len(ids)))
    assert tokenizer.decode([ids]) == [f"的{char}的"]


def test_round_trip_chinese_punctuation(tokenizer):
    text = "我们的房间很好，你说呢？好！"
    assert tokenizer.decode(tokenizer.encode([text])) == [text]


def test_encode_has_no_eos_and_batches(tokenizer):
    ids = tokenizer.encode(SENTENCES)
    assert [len(r) for r in ids] == [len(tokenizer.encode([s])[0]) for s in SENTENCES]
    assert all(EOS_ID not in r and PAD_ID not in r for r in ids)
    assert tokenizer.encode([]) == []


def test_decode_cuts_at_first_eos_and_drops_padding(tokenizer):
    a, b = tokenizer.encode(["我们的家好", "the hotel"])
    assert tokenizer.decode([a + [EOS_ID] + b + [EOS_ID, PAD_ID]]) == ["我们的家好"]
    # A leading decoder-start/pad 0 and interior padding are dropped; no EOS means the whole row.
    assert tokenizer.decode([[PAD_ID] + a[:2] + [PAD_ID, PAD_ID] + a[2:]]) == ["我们的家好"]
    assert tokenizer.decode([[EOS_ID] + a]) == [""]
    assert tokenizer.decode([[PAD_ID] * 4]) == [""]
    # A padded int32 array of rows, as greedy decoding returns it.
    width = max(len(a), len(b)) + 3
    arr = np.zeros((2, width), np.int32)
    arr[0, :len(a)] = a
    arr[0, len(a)] = EOS_ID
    arr[1, :len(b)] = b
    arr[1, len(b)] = EOS_ID
    arr[1, len(b) + 1:] = a[0]  # junk after EOS is ignored
    assert tokenizer.decode(arr) == ["我们的家好", "the hotel"]


def test_model_proto_round_trips(tokenizer, tmp_path):
    path = tmp_path / "spiece.model"
    path.write_bytes(tokenizer.model_proto())
    loaded = Tokenizer.load(path)
    assert loaded.path == str(path) and loaded.vocab_size == tokenizer.vocab_size
    texts = SENTENCES + UNSEEN
    assert loaded.encode(texts) == tokenizer.encode(texts)


def test_same_seed_same_model(corpus, tmp_path):
    first = train_tokenizer(corpus, vocab_size=600, character_coverage=1.0, seed=3)
    second = train_tokenizer(corpus, vocab_size=600, character_coverage=1.0, seed=3)
    (tmp_path / "a.model").write_bytes(first.model_proto())
    (tmp_path / "b.model").write_bytes(second.model_proto())
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()


def test_max_sentences_limits_training_text(alphabet):
    zh_chars, en_words = alphabet
    english = [" ".join(en_words[(i + k) % len(en_words)] for k in range(6)) for i in range(120)]
    chinese = [zh_chars[i:i + 8] for i in range(0, 100, 2)]
    assert len(english) > 100  # sentencepiece refuses input_sentence_size <= 100
    full = train_tokenizer(english + chinese, vocab_size=400, character_coverage=1.0)
    capped = train_tokenizer(english + chinese, vocab_size=400, character_coverage=1.0,
                             max_sentences=len(english))
    char = zh_chars[0]
    assert BYTE_OFFSET + char.encode()[0] not in full.encode([char])[0]
    byte_ids = [BYTE_OFFSET + b for b in char.encode()]
    assert [i for i in capped.encode([char])[0] if i < BYTE_OFFSET + 256] == byte_ids


def test_small_max_sentences_trains(corpus):
    tok = train_tokenizer(corpus, vocab_size=600, character_coverage=1.0, max_sentences=100)
    assert tok.vocab_size > 259


def test_vocab_too_small_raises_with_hint(corpus):
    with pytest.raises(SoraError) as err:
        train_tokenizer(corpus, vocab_size=100, character_coverage=1.0)
    assert "raise config.tokenizer.vocab_size" in str(err.value)
    assert "259 + the number of distinct characters" in str(err.value)


def test_empty_text_raises():
    with pytest.raises(SoraError, match="training split is empty"):
        train_tokenizer(["", "  ", "\n"], vocab_size=300)


def test_load_non_sentencepiece_file_raises(tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"this is not a sentencepiece model\x00\xff")
    with pytest.raises(SoraError, match="not a valid sentencepiece model") as err:
        Tokenizer.load(bad)
    assert str(bad) in str(err.value)
    with pytest.raises(SoraError, match="does not exist"):
        Tokenizer.load(tmp_path / "missing.model")


def test_model_with_wrong_special_ids_rejected(corpus):
    model = io.BytesIO()
    # sentencepiece's defaults: unk=0, bos=1, eos=2, no pad.
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=model, vocab_size=300,
                                   character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    with pytest.raises(SoraError, match="pad id -1 and eos id 2"):
        Tokenizer(model.getvalue())


# ---------------------------------------------------------------- sentinels (T5 / Hugging Face numbering)

HF_SPIECE = Path(__file__).parent / "fixtures" / "hf_t5" / "t5_v1_0" / "spiece.model"


def test_sentinels_count_down_from_the_highest_id():
    tok = Tokenizer.load(HF_SPIECE)  # 300 pieces: HF's T5Tokenizer gives <extra_id_0> = 399, <extra_id_99> = 300
    assert (tok.num_pieces, tok.extra_ids, tok.vocab_size) == (300, 100, 400)
    assert [tok.sentinel_id(n) for n in (0, 1, 2, 99)] == [399, 398, 397, 300]
    small = Tokenizer.load(HF_SPIECE, extra_ids=3)
    assert small.vocab_size == 303 and [small.sentinel_id(n) for n in range(3)] == [302, 301, 300]
    with pytest.raises(SoraError, match=r"<extra_id_3> does not exist: .* 3 sentinels \(<extra_id_0>..<extra_id_2>\)"):
        small.sentinel_id(3)
    with pytest.raises(SoraError, match="<extra_id_-1> does not exist"):
        small.sentinel_id(-1)


def test_no_extra_ids_is_the_plain_model(tokenizer):
    plain = Tokenizer(tokenizer._sp.serialized_model_proto(), extra_ids=0)
    assert plain.vocab_size == plain.num_pieces == tokenizer.num_pieces
    ids = tokenizer.encode(SENTENCES)
    assert plain.encode(SENTENCES) == ids and plain.decode(ids) == SENTENCES
    # Ids past the pieces are padded embedding rows: dropped, as before sentinels existed.
    row = ids[0][:2] + [plain.num_pieces, plain.num_pieces + 5] + ids[0][2:]
    assert plain.decode([row]) == plain.decode([row], show_sentinels=True) == [SENTENCES[0]]
    with pytest.raises(SoraError, match=r"has no sentinel ids \(extra_ids=0\); span corruption needs them"):
        plain.sentinel_id(0)


@pytest.mark.parametrize("extra_ids", [-1, 2.0, True])
def test_bad_extra_ids_rejected(tokenizer, extra_ids):
    with pytest.raises(SoraError, match="must be a whole number >= 0"):
        Tokenizer(tokenizer._sp.serialized_model_proto(), extra_ids=extra_ids)


def test_decode_hides_sentinels_unless_asked(tokenizer):
    the, hotel, room, *rest = tokenizer.encode(["the hotel room was clean"])[0]
    s0, s1 = tokenizer.sentinel_id(0), tokenizer.sentinel_id(1)
    padded_row = tokenizer.vocab_size + 3  # a padded embedding row: never text, not even with show_sentinels
    inputs = [the, s0, room, *rest, s1, padded_row, EOS_ID, s0]
    assert tokenizer.decode([inputs]) == ["the room was clean"]
    assert tokenizer.decode([inputs], show_sentinels=True) == ["the<extra_id_0> room was clean<extra_id_1>"]
    targets = [PAD_ID, s0, hotel, s1, EOS_ID]
    assert tokenizer.decode([targets], show_sentinels=True) == ["<extra_id_0> hotel<extra_id_1>"]
    assert tokenizer.decode([targets]) == ["hotel"]
    last = tokenizer.sentinel_id(99)
    assert last == tokenizer.num_pieces and tokenizer.decode([[last]], show_sentinels=True) == ["<extra_id_99>"]


def test_trained_tokenizer_reloads_with_the_same_ids(tokenizer, tmp_path):
    (tmp_path / "t.model").write_bytes(tokenizer.model_proto())
    loaded = Tokenizer.load(tmp_path / "t.model")
    assert loaded.vocab_size == tokenizer.vocab_size and loaded.sentinel_id(0) == tokenizer.sentinel_id(0)


def test_user_defined_symbols_are_single_pieces(corpus):
    modes = ("[NLU]", "[NLG]", "[S2S]")
    tok = train_tokenizer(corpus, vocab_size=600, character_coverage=1.0, user_defined_symbols=modes, extra_ids=7)
    plain = train_tokenizer(corpus, vocab_size=600, character_coverage=1.0)
    assert tok.extra_ids == 7 and tok.vocab_size == tok.num_pieces + 7
    symbol_ids = [tok._sp.piece_to_id(m) for m in modes]
    assert UNK_ID not in symbol_ids and len(set(symbol_ids)) == 3
    for mode, symbol in zip(modes, symbol_ids, strict=True):
        ids = tok.encode([f"{mode} the hotel"])[0]
        assert symbol in ids and tok.decode([ids]) == [f"{mode} the hotel"]
        # Without the symbols the same text is spelt in several pieces.
        assert [tok._sp.id_to_piece(i) for i in tok.encode([mode])[0]] == ["\u2581", mode]
        # Without the symbols the same text is spelt in several pieces (here bytes: "[" is not in the corpus).
        plain_pieces = [plain._sp.id_to_piece(i) for i in plain.encode([mode])[0]]
        assert len(plain_pieces) > 3 and mode not in plain_pieces
