"""The user's own unlabelled text (for pretraining) from plain-text or JSONL files.

Formats, chosen by file suffix (.jsonl/.ndjson/.json: JSONL; .txt/.text/.md: plain text; otherwise by the
first non-blank line: JSONL if it starts with "{"):
- plain text, `text_format="lines"` (the default): every non-blank line is one document;
  `text_format="paragraphs"`: runs of non-blank lines separated by blank lines are one document each (their
  lines joined with "\\n").
- JSONL: one JSON object per line with a string under `text_key` (default "text"; other keys ignored).
Files are UTF-8 (a leading BOM is allowed); lines (whitespace-only lines count as blank) keep everything but the
line ending. Every problem raises SoraError naming the file and the line.

No de-duplication or re-splitting: the train files become "train", the eval files "validation" and "test" (as
in the text pairs builder), in file order. The config is named after a fingerprint of the options and the
files' paths and contents, so editing a file leads to a fresh build.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import tensorflow_datasets as tfds

from sora_jax.data.builders import _common, text_pairs_files
from sora_jax.errors import SoraError

TEXT_FORMATS = ("lines", "paragraphs")
_TEXT_SUFFIXES = (".txt", ".text", ".md")
_GLOB_EXAMPLE = "text/JSONL file globs, e.g. 'corpus/*.txt'"


def file_format(path: str) -> str:
    """'text' or 'jsonl' for a data file (see the module docstring)."""
    return text_pairs_files.detect_format(path, "text", _TEXT_SUFFIXES)


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, line without its ending) for every line, blank ones included."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SoraError(
                    f"{path}, line {line_no}: not valid UTF-8 (byte {e.start}): re-save the file as UTF-8"
                ) from None
            yield line_no, (line.removeprefix("\ufeff") if line_no == 1 else line).rstrip("\r\n")


def _parse_jsonl(line: str, where: str, text_key: str) -> str:
    example = f'{{"{text_key}": "..."}}'
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise SoraError(
            f"{where}: invalid JSON ({e.msg} at column {e.colno}): each line must be one object like {example}"
        ) from None
    if not isinstance(record, dict):
        raise SoraError(f"{where}: expected a JSON object like {example}, got {type(record).__name__}")
    if text_key not in record:
        raise SoraError(
            f"{where}: missing key {text_key!r} (keys present: {sorted(record)}): add it or set "
            "task_options.text_key to the key that holds the text"
        )
    text = record[text_key]
    if not isinstance(text, str):
        raise SoraError(f"{where}: {text_key!r} must be a JSON string, got {type(text).__name__}")
    return text


def read_documents(path: str, text_format: str = "lines", text_key: str = "text") -> Iterator[tuple[int, str]]:
    """Yields (line number where it starts, document) for every document of a plain-text or JSONL file."""
    if text_format not in TEXT_FORMATS:
        raise SoraError(f"text_format {text_format!r} is not one of {', '.join(TEXT_FORMATS)}: fix the config")
    jsonl = file_format(path) == "jsonl"
    any_document = False
    paragraph: list[str] = []
    start = 0
    for line_no, line in _lines(path):
        blank = not line.strip()
        if jsonl:
            if blank:
                continue
            text = _parse_jsonl(line, f"{path}, line {line_no}", text_key)
            if not text.strip():
                raise SoraError(f"{path}, line {line_no}: empty {text_key!r}: every record needs a non-empty text")
            any_document = True
            yield line_no, text
        elif text_format == "lines":
            if not blank:
                any_document = True
                yield line_no, line
        elif blank:
            if paragraph:
                any_document = True
                yield start, "\n".join(paragraph)
                paragraph = []
        else:
            start = start if paragraph else line_no
            paragraph.append(line)
    if paragraph:
        any_document = True
        yield start, "\n".join(paragraph)
    if not any_document:
        raise SoraError(f"{path}, line 1: the file is empty (no non-blank line): add text or remove it from the glob")


@dataclasses.dataclass(eq=False)
class TextFilesConfig(tfds.core.BuilderConfig):
    """Resolved absolute file paths per split and how to read them (build it with `TextFiles.make_config`)."""

    train_files: tuple[str, ...] = ()
    validation_files: tuple[str, ...] = ()
    text_format: str = "lines"
    text_key: str = "text"


class TextFiles(tfds.core.GeneratorBasedBuilder):
    """The user's unlabelled documents: {"text": Text}; splits train, validation and test (= validation).

    `TextFiles(data_dir=..., train_files="corpus/*.txt", eval_files="dev.jsonl", text_format="lines",
    text_key="text")`. Read back with `builders.data_source`: "text" decodes to UTF-8 `bytes`; file order.
    """

    VERSION = tfds.core.Version("1.0.0")
    code_path = _common.module_code_path(__file__)
    RELEASE_NOTES = {"1.0.0": "Initial release: plain text (lines or paragraphs) and JSONL, fingerprinted configs."}

    def __init__(
        self,
        *,
        train_files: str | None = None,
        eval_files: str | None = None,
        text_format: str = "lines",
        text_key: str = "text",
        **kwargs: Any,
    ):
        if kwargs.get("config") is None:
            kwargs["config"] = self.make_config(train_files or "", eval_files or "", text_format, text_key)
        elif train_files or eval_files:
            raise SoraError("TextFiles: pass either config= or train_files=/eval_files=, not both")
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    @classmethod
    def make_config(
        cls, train_files: str, eval_files: str, text_format: str = "lines", text_key: str = "text"
    ) -> TextFilesConfig:
        """Expands the globs and names the config after the options' and files' fingerprint."""
        if text_format not in TEXT_FORMATS:
            raise SoraError(
                f"task_options.text_format {text_format!r} is not one of {', '.join(TEXT_FORMATS)}: fix the config"
            )
        if not text_key:
            raise SoraError("task_options.text_key is empty: set it to the JSONL key that holds the text")
        files = {
            "train": text_pairs_files.expand_patterns(train_files, "train_files", _GLOB_EXAMPLE),
            "validation": text_pairs_files.expand_patterns(eval_files, "eval_files", _GLOB_EXAMPLE),
        }
        files["test"] = files["validation"]
        tag = json.dumps(["text_files/1", text_format, text_key])
        return TextFilesConfig(
            name="fp" + text_pairs_files.fingerprint(files, tag)[:24],
            description=f"train={train_files!r} eval={eval_files!r} text_format={text_format} text_key={text_key}",
            train_files=files["train"],
            validation_files=files["validation"],
            text_format=text_format,
            text_key=text_key,
        )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="User-supplied unlabelled text from plain-text/JSONL files.",
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
            disable_shuffling=True,  # Keep file order.
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # Local files only.
        config = self.builder_config
        layout = {"train": config.train_files, "validation": config.validation_files, "test": config.validation_files}
        return {split: self._generate_examples(files) for split, files in layout.items()}

    def _generate_examples(self, files: tuple[str, ...]):
        key = 0
        for path in files:
            for _, text in read_documents(path, self.builder_config.text_format, self.builder_config.text_key):
                yield key, {"text": text}
                key += 1
