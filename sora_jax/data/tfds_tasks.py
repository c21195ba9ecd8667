"""Any TFDS dataset as a Sora task: `get_task("tfds:NAME[/CONFIG][:VERSION]", options)`.

    # unlabelled text (kind "text"): to_text_pair -> {"text": ...}
    get_task("tfds:imdb_reviews:1.0.0", {"text_key": "text"})
    # supervised: fields rendered into templates; ClassLabel ids become their names
    get_task("tfds:glue/sst2", {"inputs_template": "sst2 sentence: {sentence}", "targets_template": "{label}"})

The kind is task_options.kind, by default "classification" when the targets template is exactly one ClassLabel
field (its labels are then the rendered class names) and "generation" otherwise. The dataset is read from the
prepared `data_dir` (array_record files); it is downloaded and prepared only with task_options.download true.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import logging
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow_datasets as tfds

from sora_jax.data import builders
from sora_jax.data.registry import KINDS, Task, option_flag
from sora_jax.errors import SoraError

PREFIX = "tfds:"
_SPEC = re.compile(
    r"tfds:(?P<name>[a-z_][a-z0-9_]*)(?:/(?P<config>[\w.\-]+))?(?::(?P<version>[\d*]+\.[\d*]+\.[\d*]+))?"
)
# tfds registers the builders of these sub-packages only when they are imported (lazily, on first use).
_CATALOG_PACKAGES = (
    "audio", "graphs", "image", "image_classification", "object_detection", "nearest_neighbors",
    "question_answering", "d4rl", "ranking", "recommendation", "rl_unplugged", "rlds.datasets", "robotics",
    "robomimic", "structured", "summarization", "text", "text_simplification", "time_series", "translate",
    "video", "vision_language",
)


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
    """A parsed `tfds:NAME[/CONFIG][:VERSION]`."""

    name: str
    config: str | None = None
    version: str | None = None

    @property
    def tfds_name(self) -> str:
        """The name as `tfds.builder` takes it: `name[/config][:version]`."""
        return self.name + (f"/{self.config}" if self.config else "") + (f":{self.version}" if self.version else "")


def parse_spec(spec: str) -> TfdsSpec:
    """`tfds:glue/sst2:2.0.0` -> TfdsSpec("glue", "sst2", "2.0.0"); SoraError for anything else."""
    match = _SPEC.fullmatch(spec.strip())
    if match is None:
        raise SoraError(
            f"task {spec!r} is not of the form tfds:NAME[/CONFIG][:VERSION] (e.g. tfds:glue/sst2:2.0.0): "
            "fix config.data.task"
        )
    return TfdsSpec(match["name"], match["config"], match["version"])


@functools.cache
def _import_catalog() -> None:
    for package in _CATALOG_PACKAGES:
        try:
            importlib.import_module(f"tensorflow_datasets.{package}")
        except Exception as e:  # (a sub-package with a missing optional dependency: its datasets stay unknown)
            logging.debug("tensorflow_datasets.%s not importable: %s", package, e)


def _builder_cls(name: str) -> type[tfds.core.DatasetBuilder] | None:
    for attempt in range(2):
        try:
            return tfds.builder_cls(name)
        except tfds.core.DatasetNotFoundError:
            if attempt == 0:
                _import_catalog()
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    text = text.split("\n", 1)[0] if text else ""
    return re.sub(r'^Failed to construct dataset "[^"]*", builder_kwargs "[^"]*": ', "", text)


def _diagnose(spec: TfdsSpec, data_dir: str | None, error: BaseException) -> SoraError:
    """The one-line SoraError for a tfds.builder failure: unknown name, config or version."""
    cls = _builder_cls(spec.name)
    where = f" and no prepared copy in {data_dir}" if data_dir else ""
    if cls is None:
        _import_catalog()
        close = difflib.get_close_matches(spec.name, tfds.list_builders(with_community_datasets=False), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        return SoraError(
            f"no TFDS dataset named {spec.name!r}{where}: {hint}see https://www.tensorflow.org/datasets/catalog"
        )
    configs = [c.name for c in cls.BUILDER_CONFIGS]
    if spec.config and spec.config not in configs:
        if not configs:
            return SoraError(f"TFDS dataset {spec.name!r} has no configs: use tfds:{spec.name} without /{spec.config}")
        close = difflib.get_close_matches(spec.config, configs, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return SoraError(
            f"TFDS dataset {spec.name!r} has no config {spec.config!r}{where}: {hint}configs: {', '.join(configs[:30])}"
        )
    if spec.version and isinstance(error, AssertionError):
        unversioned = dataclasses.replace(spec, version=None)
        try:
            versions = [str(v) for v in tfds.builder(unversioned.tfds_name, data_dir=data_dir).versions]
        except Exception:  # (only for the hint: report the original error instead)
            versions = [_first_line(error)]
        return SoraError(
            f"TFDS dataset {unversioned.tfds_name} has no version {spec.version}{where}: "
            f"use one of {', '.join(versions)} (or leave the version out for {versions[0]})"
        )
    return SoraError(f"cannot load the TFDS dataset {spec.tfds_name} ({type(error).__name__}: {_first_line(error)})")


def load_builder(spec: TfdsSpec, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """The builder of `spec` over `data_dir` (None: tfds's default folder); nothing is read or prepared."""
    _builder_cls(spec.name)  # Imports the lazily registered catalog when the name is not registered yet.
    try:
        return tfds.builder(spec.tfds_name, data_dir=data_dir, file_format="array_record")
    except (ValueError, AssertionError) as e:  # (DatasetNotFoundError is a ValueError)
        raise _diagnose(spec, data_dir, e) from None


def download(spec: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """Downloads and prepares `tfds:NAME[/CONFIG][:VERSION]` into `data_dir` as array_record (needs network)."""
    parsed = parse_spec(spec if spec.startswith(PREFIX) else PREFIX + spec)
    builder = load_builder(parsed, data_dir)
    if not builders.is_prepared(builder):
        builder.download_and_prepare(download_config=builders.download_config())
    return builder


def make_builder(spec: str, signature: tuple[Any, ...], data_dir: str, options: Mapping[str, Any]):
    """The prepared builder of a tfds task (a Task.make_builder once `spec` and `signature` are bound)."""
    parsed = parse_spec(spec)
    builder = load_builder(parsed, data_dir)
    if not builders.is_prepared(builder):
        if not option_flag(options, "download", False):
            raise SoraError(
                f"{spec} is not prepared in {builder.data_dir} and task_options.download is false: on a machine "
                f"with network run `python -c \"from sora_jax.data import tfds_tasks; tfds_tasks.download("
                f"'{spec}', '{data_dir}')\"` and copy {data_dir} here, or set task_options.download: true"
            )
        try:
            builder.download_and_prepare(download_config=builders.download_config())
        except Exception as e:  # (network, manual downloads, missing modules or disk problems)
            raise SoraError(
                f"{spec} is not prepared in {builder.data_dir} and preparing it failed ({type(e).__name__}: "
                f"{_first_line(e)}): prepare it on a machine with network access and copy the data_dir"
            ) from e
    found = _signature(_features(builder, spec), [field for field, *_ in signature])
    if found != signature:
        raise SoraError(
            f"{spec}: the prepared copy in {builder.data_dir} has other features ({found}) than its code "
            f"({signature}): prepare it again with this TFDS version"
        )
    return builder


def _features(builder: tfds.core.DatasetBuilder, spec: str) -> Mapping[str, Any]:
    features = builder.info.features
    if not isinstance(features, tfds.features.FeaturesDict):
        raise SoraError(f"{spec}: its features are a {type(features).__name__}, not a dict of named fields")
    return features


def _signature(features: Mapping[str, Any], fields: Sequence[str]) -> tuple[Any, ...]:
    """What the task relies on: each used field's feature type (and ClassLabel names)."""
    return tuple(
        (field, type(features[field]).__name__, tuple(getattr(features[field], "names", ()) or ()))
        for field in fields
        if field in features
    )


def _render(value: Any, names: tuple[str, ...], field: str) -> str:
    if hasattr(value, "item") and not isinstance(value, bytes | str):  # numpy scalar / 0-d array
        value = value.item()
    if names:
        index = int(value)
        if not 0 <= index < len(names):
            raise SoraError(
                f"field {field!r} has class id {index}, not one of its {len(names)} labels (an unlabelled split, "
                "e.g. a GLUE test split): use a labelled split"
            )
        return names[index]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def text_document(text_key: str, ex: Mapping[str, Any]) -> dict[str, str]:
    """The to_text_pair of a text task (with `text_key` bound): {"text": the field's text}."""
    return {"text": _render(ex[text_key], (), text_key)}


def templated_pair(
    inputs_template: str, targets_template: str, class_names: Mapping[str, tuple[str, ...]], ex: Mapping[str, Any]
) -> dict[str, str]:
    """The to_text_pair of a supervised tfds task: both templates filled with the example's fields."""
    values = _TemplateValues(ex, class_names)
    return {"inputs": inputs_template.format_map(values), "targets": targets_template.format_map(values)}


class _TemplateValues(dict):
    """Renders only the fields a template asks for (others may be images etc.)."""

    def __init__(self, ex: Mapping[str, Any], class_names: Mapping[str, tuple[str, ...]]):
        super().__init__()
        self._ex, self._names = ex, class_names

    def __missing__(self, field: str) -> str:
        return _render(self._ex[field], self._names.get(field, ()), field)


def _template_fields(template: str, option: str, features: Mapping[str, Any], spec: str) -> list[str]:
    """The field names of a template, each checked to be a renderable feature of the dataset."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise SoraError(
            f"task_options.{option} {template!r} is not a valid template ({e}): use {{field}} names"
        ) from None
    fields = []
    for _, field, _, _ in parsed:
        if field is None:
            continue
        if field not in features:
            raise SoraError(
                f"task_options.{option} names {{{field}}}, which {spec} does not have: its fields are "
                f"{', '.join(sorted(features))}"
            )
        feature = features[field]
        if not isinstance(feature, tfds.features.Tensor) or feature.shape != ():
            raise SoraError(
                f"task_options.{option}: field {field!r} of {spec} is a {type(feature).__name__}; templates take "
                "Text, ClassLabel and scalar fields only"
            )
        fields.append(field)
    return fields


def _labels(options: Mapping[str, Any]) -> tuple[str, ...]:
    labels = options.get("labels") or ()
    if isinstance(labels, str):
        labels = [s.strip() for s in labels.split(",") if s.strip()]
    return tuple(str(label) for label in labels)


TFDS_OPTIONS = ("text_key", "inputs_template", "targets_template", "kind", "labels", "target_language", "download")


def make_tfds_task(spec: str, options: Mapping[str, Any]) -> Task:
    """The Task for `tfds:NAME[/CONFIG][:VERSION]` with text_key or inputs_template/targets_template options."""
    parsed = parse_spec(spec)
    features = _features(load_builder(parsed, None), spec)  # The code's features: no data is read here.
    text_key = options.get("text_key")
    inputs_template, targets_template = options.get("inputs_template"), options.get("targets_template")
    kind = options.get("kind")
    text_fields = [k for k, f in features.items() if isinstance(f, tfds.features.Text)]
    if text_key and (inputs_template or targets_template):
        raise SoraError(
            f"task {spec}: set either task_options.text_key (an unlabelled text task) or inputs_template and "
            "targets_template (a supervised task), not both"
        )
    if text_key or kind == "text":
        if not text_key:
            raise SoraError(
                f"task {spec} of kind text needs task_options.text_key, the field with the documents: one of "
                f"{', '.join(text_fields) or '(no Text field)'}"
            )
        if kind not in (None, "text"):
            raise SoraError(f"task {spec}: text_key makes a text task, but task_options.kind is {kind!r}: drop one")
        if text_key not in features or not isinstance(features[text_key], tfds.features.Text):
            raise SoraError(
                f"task_options.text_key {text_key!r} is not a Text field of {spec}: use one of "
                f"{', '.join(text_fields) or '(no Text field)'} (all fields: {', '.join(sorted(features))})"
            )
        return Task(
            name=spec,
            kind="text",
            make_builder=functools.partial(make_builder, spec, _signature(features, [text_key])),
            to_text_pair=functools.partial(text_document, str(text_key)),
            target_language=str(options.get("target_language", "en")),
            options=TFDS_OPTIONS,
        )
    if not (inputs_template and targets_template):
        missing = " and ".join(k for k, v in (("inputs_template", inputs_template),
                                              ("targets_template", targets_template)) if not v)
        raise SoraError(
            f"task {spec} needs task_options.text_key (an unlabelled text task) or inputs_template and "
            f"targets_template (a supervised task; {missing} missing), e.g. \"sst2 sentence: {{sentence}}\" and "
            f"\"{{label}}\": its fields are {', '.join(sorted(features))}"
        )
    inputs_fields = _template_fields(str(inputs_template), "inputs_template", features, spec)
    targets_fields = _template_fields(str(targets_template), "targets_template", features, spec)
    class_names = {
        field: tuple(features[field].names)
        for field in inputs_fields + targets_fields
        if isinstance(features[field], tfds.features.ClassLabel)
    }
    single_class = len(set(targets_fields)) == 1 and targets_fields[0] in class_names
    kind = str(kind or ("classification" if single_class else "generation"))
    if kind not in KINDS or kind == "text":
        raise SoraError(
            f"task_options.kind {kind!r} is not one of {', '.join(k for k in KINDS if k != 'text')} "
            "(kind text takes text_key instead of templates): fix the config"
        )
    labels = _labels(options)
    if kind == "classification" and not labels:
        if not single_class:
            raise SoraError(
                f"task {spec} is a classification task but targets_template {targets_template!r} is not one "
                "ClassLabel field: set task_options.labels to the target strings"
            )
        field = targets_fields[0]
        labels = tuple(str(targets_template).format_map({field: name}) for name in class_names[field])
    return Task(
        name=spec,
        kind=kind,
        make_builder=functools.partial(make_builder, spec, _signature(features, inputs_fields + targets_fields)),
        to_text_pair=functools.partial(templated_pair, str(inputs_template), str(targets_template), class_names),
        labels=labels if kind == "classification" else (),
        target_language=str(options.get("target_language", "en")),
        input_example=(functools.partial(_input_example, inputs_fields[0], targets_fields, class_names)
                       if len(set(inputs_fields)) == 1 else None),
        options=TFDS_OPTIONS,
    )


def _input_example(field: str, targets_fields: list[str], class_names: Mapping[str, Any], text: str) -> dict:
    # A user's text in the one inputs field; placeholders (that only shape the targets) in the others.
    return {field: text, **{f: 0 if f in class_names else "" for f in targets_fields if f != field}}
