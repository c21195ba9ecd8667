"""The user's own (input, target) text pairs from TSV or JSONL files.

Formats, chosen by file suffix (.tsv/.txt/.tab: TSV; .jsonl/.ndjson/.json: JSONL; otherwise by the first
non-blank line: JSONL if it starts with "{"):
- TSV: one `input<TAB>target` per line, exactly one tab, no quoting or escapes (text is taken verbatim).
- JSONL: one JSON object per line with string values under "inputs" and "targets" (other keys ignored).
Files are UTF-8 (a leading BOM is allowed); blank lines are skipped; line endings (\\n or \\r\\n) are removed
and nothing else is stripped. Every problem raises SoraError naming the file and the line.

No de-duplication or re-splitting is done: the train files become "train", the eval files become
"validation" and (unless separate test files are given) also "test", in file order (sorted paths of each
glob, then line order). The prepared data lives under a config named after a fingerprint of the files'
paths and contents, so editing a file leads to a fresh build and stale data is never read.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import tensorflow_datasets as tfds

from sora_jax.data.builders import _common
from sora_jax.errors import SoraError

_TSV_SUFFIXES = (".tsv", ".txt", ".tab")
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
_SPLITS = ("train", "validation", "test")


def expand_patterns(patterns: str, option: str, example: str = "TSV/JSONL file globs, e.g. 'data/train*.tsv'"
                    ) -> tuple[str, ...]:
    """Comma-separated globs -> sorted unique absolute file paths; SoraError for a pattern with no file."""
    if not patterns or not patterns.strip():
        raise SoraError(f"{option} is empty: set it to comma-separated {example}")
    files: set[str] = set()
    for pattern in (p.strip() for p in patterns.split(",")):
        if not pattern:
            continue
        matches = [m for m in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(m)]
        if not matches:
            raise SoraError(
                f"{option} pattern {pattern!r} matches no file (working directory {os.getcwd()}): "
                "fix the path or glob"
            )
        files.update(os.path.abspath(m) for m in matches)
    return tuple(sorted(files))


def detect_format(path: str, plain: str, plain_suffixes: tuple[str, ...]) -> str:
    """`plain` or 'jsonl' for a data file: by its suffix, else by whether its first non-blank line is an object."""
    suffix = pathlib.Path(path).suffix.lower()
    if suffix in plain_suffixes:
        return plain
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                return "jsonl" if raw.lstrip(b"\xef\xbb\xbf \t").startswith(b"{") else plain
    return plain


def file_format(path: str) -> str:
    """'tsv' or 'jsonl' for a data file (see the module docstring)."""
    return detect_format(path, "tsv", _TSV_SUFFIXES)


def _parse_tsv(line: str, where: str) -> tuple[str, str]:
    tabs = line.count("\t")
    if tabs != 1:
        raise SoraError(
            f"{where}: expected `input<TAB>target` with exactly one tab, found {tabs}: "
            "fix the line (or use JSONL for texts that contain tabs)"
        )
    inputs, targets = line.split("\t")
    return inputs, targets


def _parse_jsonl(line: str, where: str) -> tuple[str, str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise SoraError(
            f"{where}: invalid JSON ({e.msg} at column {e.colno}): each line must be one object like "
            '{"inputs": "...", "targets": "..."}'
        ) from None
    if not isinstance(record, dict):
        raise SoraError(
            f'{where}: expected a JSON object like {{"inputs": "...", "targets": "..."}}, '
            f"got {type(record).__name__}"
        )
    missing = [k for k in ("inputs", "targets") if k not in record]
    if missing:
        raise SoraError(
            f"{where}: missing key(s) {missing} (keys present: {sorted(record)}): "
            'each line needs "inputs" and "targets"'
        )
    for key in ("inputs", "targets"):
        if not isinstance(record[key], str):
            raise SoraError(f"{where}: {key!r} must be a JSON string, got {type(record[key]).__name__}")
    return record["inputs"], record["targets"]


def read_pairs(path: str) -> Iterator[tuple[int, str, str]]:
    """Yields (line number, inputs, targets) for every non-blank line of a TSV or JSONL file."""
    parse = _parse_jsonl if file_format(path) == "jsonl" else _parse_tsv
    any_line = False
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            where = f"{path}, line {line_no}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SoraError(
                    f"{where}: not valid UTF-8 (byte {e.start}): re-save the file as UTF-8"
                ) from None
            if line_no == 1:
                line = line.removeprefix("\ufeff")
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            any_line = True
            inputs, targets = parse(line, where)
            for name, value in (("input", inputs), ("target", targets)):
                if not value.strip():
                    raise SoraError(f"{where}: empty {name}: every line needs a non-empty input and target")
            yield line_no, inputs, targets
    if not any_line:
        raise SoraError(
            f"{path}, line 1: the file is empty (no non-blank line): add data or remove it from the glob"
        )


def fingerprint(files: dict[str, tuple[str, ...]], tag: str = "text_pairs_files/1") -> str:
    """A hash of `tag`, the split layout, the paths and the contents of the files (checks that none is empty)."""
    digest = hashlib.sha256(tag.encode())
    for split in _SPLITS:
        digest.update(f"\0split={split}".encode())
        for path in files[split]:
            content = hashlib.sha256()
            blank = True
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    content.update(chunk)
                    blank = blank and not chunk.strip(b" \t\r\n\xef\xbb\xbf")
            if blank:
                raise SoraError(
                    f"{path}, line 1: the file is empty (no non-blank line): "
                    "add data or remove it from the glob"
                )
            digest.update(f"\0file={path}\0".encode() + content.digest())
    return digest.hexdigest()


@dataclasses.dataclass(eq=False)
class TextPairsFilesConfig(tfds.core.BuilderConfig):
    """Resolved absolute file paths per split (build it with `TextPairsFiles.make_config`)."""

    train_files: tuple[str, ...] = ()
    validation_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()


class TextPairsFiles(tfds.core.GeneratorBasedBuilder):
    """The user's TSV/JSONL pairs: {"inputs": Text, "targets": Text}; splits train, validation, test.

    `TextPairsFiles(data_dir=..., train_files="a.tsv,more/*.jsonl", eval_files="dev.tsv", test_files=None)`.
    Read back with `builders.data_source`: Text features decode to UTF-8 `bytes`; examples keep file order.
    """

    VERSION = tfds.core.Version("1.0.0")
    code_path = _common.module_code_path(__file__)
    RELEASE_NOTES = {"1.0.0": "Initial release: TSV and JSONL, content-fingerprinted configs."}

    def __init__(
        self,
        *,
        train_files: str | None = None,
        eval_files: str | None = None,
        test_files: str | None = None,
        **kwargs: Any,
    ):
        if kwargs.get("config") is None:
            kwargs["config"] = self.make_config(train_files or "", eval_files or "", test_files)
        elif train_files or eval_files or test_files:
            raise SoraError("TextPairsFiles: pass either config= or train_files=/eval_files=, not both")
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    @classmethod
    def make_config(
        cls, train_files: str, eval_files: str, test_files: str | None = None
    ) -> TextPairsFilesConfig:
        """Expands the globs and names the config after the files' content fingerprint."""
        files = {
            "train": expand_patterns(train_files, "train_files"),
            "validation": expand_patterns(eval_files, "eval_files"),
        }
        files["test"] = expand_patterns(test_files, "test_files") if test_files else files["validation"]
        name = "fp" + fingerprint(files)[:24]
        return TextPairsFilesConfig(
            name=name,
            description=f"train={train_files!r} eval={eval_files!r} test={test_files or eval_files!r}",
            train_files=files["train"],
            validation_files=files["validation"],
            test_files=files["test"],
        )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="User-supplied text pairs from TSV/JSONL files.",
            features=tfds.features.FeaturesDict(
                {"inputs": tfds.features.Text(), "targets": tfds.features.Text()}
            ),
            supervised_keys=("inputs", "targets"),
            disable_shuffling=True,  # Keep file order (predictions line up with the eval file).
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # Local files only.
        config = self.builder_config
        layout = {
            "train": config.train_files,
            "validation": config.validation_files,
            "test": config.test_files,
        }
        return {split: self._generate_examples(files) for split, files in layout.items()}

    def _generate_examples(self, files: tuple[str, ...]):
        key = 0
        for path in files:
            for _, inputs, targets in read_pairs(path):
                yield key, {"inputs": inputs, "targets": targets}
                key += 1
