"""Any TFDS dataset as a task: a small local builder prepared into tmp, read back through get_task("tfds:...")."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from sora_jax.data import builders, tasks, tfds_tasks
from sora_jax.data.builders import _common
from sora_jax.errors import SoraError

SPEC = "tfds:sora_test_tfds_ds/cfg:1.0.0"
ROWS = [
    ("好电影", 1, "第一篇 文档"),
    ("很无聊", 0, "第二篇\n文档"),
    ("还不错", 1, "第三篇"),
]


class SoraTestTfdsDs(tfds.core.GeneratorBasedBuilder):
    """Three reviews with a ClassLabel, a scalar id, a document and a non-scalar field."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = _common.module_code_path(__file__)
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="cfg"), tfds.core.BuilderConfig(name="other")]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "sentence": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=["neg", "pos"]),
                    "idx": tfds.features.Scalar(dtype=np.int32),
                    "doc": tfds.features.Text(),
                    "pair": tfds.features.Tensor(shape=(2,), dtype=np.int32),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(ROWS), "validation": self._generate_examples(ROWS[:1])}

    def _generate_examples(self, rows):
        for i, (sentence, label, doc) in enumerate(rows):
            yield i, {"sentence": sentence, "label": label, "idx": i, "doc": doc, "pair": [i, -i]}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds_local")
    builder = SoraTestTfdsDs(data_dir=str(root), config="cfg", file_format="array_record")
    builder.download_and_prepare(download_config=builders.download_config())
    return str(root)


def pairs(task, builder, split):
    source = builders.data_source(builder, split)
    return sorted((task.to_text_pair(source[i]) for i in range(len(source))), key=str)


def test_text_task(data_dir):
    task = tasks.get_task(SPEC, {"text_key": "doc"})
    assert (task.name, task.kind, task.labels) == (SPEC, "text", ())
    builder = task.make_builder(data_dir, {})
    assert builder.data_dir == f"{data_dir}/sora_test_tfds_ds/cfg/1.0.0"
    assert pairs(task, builder, "train") == sorted(({"text": doc} for _, _, doc in ROWS), key=str)
    assert pairs(task, builder, "validation") == [{"text": "第一篇 文档"}]


def test_templated_classification_task(data_dir):
    options = {"inputs_template": "review {idx}: {sentence}", "targets_template": "{label}"}
    task = tasks.get_task(SPEC, options)
    assert (task.kind, task.labels, task.target_language) == ("classification", ("neg", "pos"), "en")
    expected = [{"inputs": f"review {i}: {s}", "targets": ["neg", "pos"][y]} for i, (s, y, _) in enumerate(ROWS)]
    assert pairs(task, task.make_builder(data_dir, options), "train") == sorted(expected, key=str)
    # grain workers pickle the preprocessor and the builder factory.
    clone = pickle.loads(pickle.dumps(task.to_text_pair))
    example = {"sentence": b"x", "label": np.int64(0), "idx": np.int32(7), "doc": b"", "pair": None}
    assert clone(example) == task.to_text_pair(example) == {"inputs": "review 7: x", "targets": "neg"}
    rebuilt = pickle.loads(pickle.dumps(task.make_builder))(data_dir, {})
    assert rebuilt.data_dir == f"{data_dir}/sora_test_tfds_ds/cfg/1.0.0"


def test_template_kinds_and_labels():
    rendered = tasks.get_task(SPEC, {"inputs_template": "{sentence}", "targets_template": "label: {label}"})
    assert rendered.kind == "classification" and rendered.labels == ("label: neg", "label: pos")
    generation = tasks.get_task(SPEC, {"inputs_template": "{doc}", "targets_template": "{sentence}"})
    assert (generation.kind, generation.labels) == ("generation", ())
    assert generation.to_text_pair({"doc": b"d", "sentence": "句".encode()}) == {"inputs": "d", "targets": "句"}
    forced = tasks.get_task(
        SPEC, {"inputs_template": "{sentence}", "targets_template": "{label}", "kind": "generation"}
    )
    assert (forced.kind, forced.labels) == ("generation", ())
    explicit = tasks.get_task(
        SPEC,
        {"inputs_template": "{doc}", "targets_template": "{sentence}", "kind": "classification", "labels": "a, b"},
    )
    assert explicit.labels == ("a", "b")
    with pytest.raises(SoraError, match="class id -1, not one of its 2 labels"):
        rendered.to_text_pair({"sentence": b"x", "label": -1})


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        (SPEC, {}, "needs task_options.text_key .* its fields are doc, idx, label, pair, sentence"),
        (SPEC, {"kind": "text"}, "kind text needs task_options.text_key, .*: one of sentence, doc"),
        (SPEC, {"text_key": "label"}, "text_key 'label' is not a Text field .* use one of sentence, doc"),
        (SPEC, {"text_key": "doc", "targets_template": "{label}"}, "either task_options.text_key .* not both"),
        (SPEC, {"inputs_template": "{sentence}"}, "targets_template missing"),
        (SPEC, {"inputs_template": "{sentense}", "targets_template": "{label}"},
         re.escape("names {sentense}, which tfds:sora_test_tfds_ds/cfg:1.0.0 does not have: its fields are doc, idx")),
        (SPEC, {"inputs_template": "{pair}", "targets_template": "{label}"}, "'pair' .* is a Tensor; templates take"),
        (SPEC, {"inputs_template": "{sentence", "targets_template": "{label}"}, "is not a valid template"),
        (SPEC, {"inputs_template": "{doc}", "targets_template": "{sentence}", "kind": "classification"},
         "is not one ClassLabel field: set task_options.labels"),
        (SPEC, {"inputs_template": "{doc}", "targets_template": "{label}", "kind": "regression"},
         "kind 'regression' is not one of classification, translation, generation"),
        ("tfds:sora_test_tfds_dss/cfg", {}, "no TFDS dataset named 'sora_test_tfds_dss': did you mean sora_test_tfds"),
        ("tfds:sora_test_tfds_ds/cgf", {}, "has no config 'cgf': did you mean 'cfg'\\? configs: cfg, other"),
        ("tfds:sora_test_tfds_ds/cfg:2.0.0", {}, "sora_test_tfds_ds/cfg has no version 2.0.0: use one of 1.0.0"),
        ("tfds:Sora-Test", {}, "is not of the form tfds:NAME\\[/CONFIG\\]\\[:VERSION\\]"),
    ],
)
def test_errors_are_one_line(spec, options, message):
    with pytest.raises(SoraError) as err:
        tasks.get_task(spec, options)
    assert re.search(message, str(err.value)), str(err.value)
    assert "\n" not in str(err.value)


def test_not_prepared_says_where_and_how(tmp_path):
    task = tasks.get_task("tfds:sora_test_tfds_ds/other", {"text_key": "doc"})
    with pytest.raises(SoraError) as err:
        task.make_builder(str(tmp_path), {})
    message = str(err.value)
    assert f"is not prepared in {tmp_path}/sora_test_tfds_ds/other/1.0.0 and task_options.download is false" in message
    assert f"tfds_tasks.download('tfds:sora_test_tfds_ds/other', '{tmp_path}')" in message and "\n" not in message
    assert not (tmp_path / "sora_test_tfds_ds").exists()  # Nothing was prepared.
    # download: true prepares it (a local generator here; a real catalog dataset would use the network).
    builder = task.make_builder(str(tmp_path), {"download": "true"})
    assert pairs(task, builder, "validation") == [{"text": "第一篇 文档"}]
    assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
    assert tfds_tasks.download("sora_test_tfds_ds/other", str(tmp_path)).data_dir == builder.data_dir
