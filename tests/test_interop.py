"""Hugging Face T5 interop (sora_jax.interop): Sora against golden outputs of transformers, round trips, errors.

The fixtures in tests/fixtures/hf_t5/ were written by tools/make_hf_t5_fixtures.py with transformers' PyTorch T5
as the oracle; these tests only read them, so they need neither torch nor transformers (one optional test
loads an export with transformers when it is installed).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shutil
from pathlib import Path

import flax.linen as nn
import hf_fixtures
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_fixtures import FAST_COMPILE, flat, forward
from jax.sharding import NamedSharding, PartitionSpec
from safetensors import safe_open
from safetensors.numpy import save_file

from sora_jax import sharding
from sora_jax.config import DEFAULT_LOGICAL_AXIS_RULES
from sora_jax.decoding.search import greedy_decode
from sora_jax.errors import SoraError
from sora_jax.interop import load_hf_t5, save_hf_t5
from sora_jax.interop.hf_t5_config import config_from_hf, config_to_hf
from sora_jax.model import EncoderDecoder

FIXTURES = Path(__file__).parent / "fixtures" / "hf_t5"
VARIANTS = ("t5_v1_0", "t5_v1_1", "mt5")
TOLERANCE = 1e-4
expected = functools.partial(hf_fixtures.expected, FIXTURES)
imported = functools.partial(hf_fixtures.imported, FIXTURES)


def read_tensors(file: Path) -> dict[str, np.ndarray]:
    with safe_open(file, framework="numpy") as f:
        return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118


def copy_fixture(variant: str, tmp_path: Path) -> Path:
    out = tmp_path / variant
    shutil.copytree(FIXTURES / variant, out)
    return out


def edit_config(directory: Path, **changes) -> None:
    file = directory / "config.json"
    config = json.loads(file.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    file.write_text(json.dumps(config))


def edit_tensors(directory: Path, drop: tuple[str, ...] = (), **replace: np.ndarray) -> None:
    file = directory / "model.safetensors"
    tensors = {k: v for k, v in read_tensors(file).items() if k not in drop}
    tensors.update({k.replace("__", "."): v for k, v in replace.items()})
    save_file(tensors, str(file), metadata={"format": "pt"})


# ---------------------------------------------------------------- golden outputs of the reference implementation


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_reference(variant):
    cfg, params, _ = imported(variant)
    ref = expected(variant)
    # Sora masks encoder keys where tokens == pad_id: the fixture's attention_mask is exactly that.
    np.testing.assert_array_equal(ref["attention_mask"], ref["input_ids"] != cfg.pad_id)
    logits = np.asarray(forward(cfg)(params, ref["input_ids"], ref["decoder_input_ids"]))
    valid = ref["decoder_attention_mask"].astype(bool)
    assert valid.sum(axis=1).tolist() == [6, 4, 2]  # all three rows, each compared at its real positions
    diff = np.abs(logits - ref["logits"])[valid].max()
    assert diff <= TOLERANCE, f"{variant}: max |sora - hf| = {diff}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_params_tree_matches_model_init(variant):
    hf_fixtures.check_params_tree_matches_model_init(FIXTURES, variant)


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_decode_matches_generate(variant):
    cfg, params, _ = imported(variant)
    ref = expected(variant)
    hf = ref["generated"]
    assert (hf[:, 0] == cfg.decoder_start_id).all()  # HF output starts with the decoder start token
    hf = hf[:, 1:]
    max_length = int(ref["max_new_tokens"])
    decode = jax.jit(functools.partial(greedy_decode, model=EncoderDecoder(cfg), max_length=max_length),
                     compiler_options=FAST_COMPILE)
    tokens = np.asarray(decode(params, jnp.asarray(ref["input_ids"])))
    assert tokens.shape == (3, max_length)
    np.testing.assert_array_equal(tokens[:, : hf.shape[1]], hf)
    assert (tokens[:, hf.shape[1]:] == cfg.pad_id).all()  # HF stops early only once every row has ended


def test_fixtures_cover_early_eos():
    """At least one fixture row ends with EOS before max_new_tokens (HF pads it with 0 afterwards)."""
    ended = [(expected(v)["generated"][:, 1:-1] == 1).any() for v in VARIANTS]
    assert any(ended)


@pytest.mark.parametrize("variant", VARIANTS)
def test_scanned_import_equals_unscanned(variant):
    cfg, params, _ = imported(variant)
    scan_cfg, scan_params, _ = imported(variant, True)
    assert scan_cfg.scan_layers and scan_cfg == dataclasses.replace(cfg, scan_layers=True)
    plain, scanned = flat(params), flat(scan_params)
    for path, leaf in plain.items():
        if len(path) > 1 and path[1].startswith("layers_"):
            layer = int(path[1].removeprefix("layers_"))
            np.testing.assert_array_equal(scanned[(path[0], "layers", *path[2:])][layer], leaf)
        else:
            np.testing.assert_array_equal(scanned[path], leaf)
    ref = expected(variant)
    logits = np.asarray(forward(scan_cfg)(scan_params, ref["input_ids"], ref["decoder_input_ids"]))
    valid = ref["decoder_attention_mask"].astype(bool)
    assert np.abs(logits - ref["logits"])[valid].max() <= TOLERANCE


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_round_trip(variant, scan, tmp_path):
    cfg, params, tokenizer = imported(variant, scan)
    save_hf_t5(tmp_path, cfg, params, tokenizer)
    cfg2, params2, tokenizer2 = load_hf_t5(tmp_path, scan_layers=scan)
    assert cfg2 == cfg
    a, b = flat(params), flat(params2)
    assert a.keys() == b.keys()
    for path in a:
        assert a[path].dtype == b[path].dtype
        assert np.array_equal(a[path], b[path]), path
    assert (tokenizer2 is None) == (tokenizer is None)
    if tokenizer is not None:
        assert (tmp_path / "spiece.model").read_bytes() == (FIXTURES / variant / "spiece.model").read_bytes()
    # The export holds exactly the tensors of HF's own save of the same architecture (same names, same values
    # where the architecture is unchanged; mT5 is written as model_type t5).
    original = read_tensors(FIXTURES / variant / "model.safetensors")
    exported = read_tensors(tmp_path / "model.safetensors")
    assert original.keys() == exported.keys()
    for name in original:
        assert np.array_equal(original[name], exported[name]), name
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == ["T5ForConditionalGeneration"] and written["model_type"] == "t5"
    assert written["is_encoder_decoder"] is True and written["decoder_start_token_id"] == 0


def test_export_accepts_boxed_and_wrapped_params(tmp_path):
    cfg, params, _ = imported("t5_v1_1")
    boxed = jax.tree.map(lambda x: nn.LogicallyPartitioned(x, ("a",) * x.ndim), params)
    save_hf_t5(tmp_path, cfg, {"params": boxed})
    _, params2, _ = load_hf_t5(tmp_path)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(params2), strict=True))


def test_param_dtype_bfloat16():
    cfg, params, _ = load_hf_t5(FIXTURES / "t5_v1_1", param_dtype="bfloat16", dtype="bfloat16")
    assert cfg.param_dtype == "bfloat16" and cfg.dtype == "bfloat16"
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}


def test_sharded_checkpoint_and_shardings(tmp_path):
    """An index + two shards loads like the single file; leaves land with the requested shardings."""
    tensors = read_tensors(FIXTURES / "t5_v1_1" / "model.safetensors")
    out = tmp_path / "sharded"
    out.mkdir()
    shutil.copy(FIXTURES / "t5_v1_1" / "config.json", out)
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        shard = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(out / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    cfg, reference, _ = imported("t5_v1_1", True)
    tokens = jnp.ones((1, 4), jnp.int32)
    boxed = jax.eval_shape(EncoderDecoder(cfg).init, jax.random.key(0), tokens, tokens)["params"]
    shardings = sharding.logical_shardings(boxed, mesh, DEFAULT_LOGICAL_AXIS_RULES)
    _, params, _ = load_hf_t5(out, scan_layers=True, shardings=shardings)
    for (path, leaf), want, ref in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(shardings),
                                       jax.tree.leaves(reference), strict=True):
        assert leaf.sharding == want, path
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(ref))
    assert flat(params)[("shared", "embedding")].shape == (384, 48)
    # One Sharding for every leaf works too.
    _, params, _ = load_hf_t5(out, shardings=NamedSharding(mesh, PartitionSpec()))
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(params))


# ---------------------------------------------------------------- config.json mapping


# Field sets as in the public hub configs (sizes shrunk).
T5_SMALL = {"architectures": ["T5WithLMHeadModel"], "d_ff": 64, "d_kv": 8, "d_model": 32, "decoder_start_token_id": 0,
            "dropout_rate": 0.1, "eos_token_id": 1, "initializer_factor": 1.0, "is_encoder_decoder": True,
            "layer_norm_epsilon": 1e-06, "model_type": "t5", "n_positions": 512, "num_heads": 4, "num_layers": 2,
            "output_past": True, "pad_token_id": 0, "relative_attention_num_buckets": 32, "vocab_size": 128,
            "task_specific_params": {"summarization": {"prefix": "summarize: "}}}
T5_V1_1 = {"architectures": ["T5ForConditionalGeneration"], "d_ff": 64, "d_kv": 8, "d_model": 32,
           "decoder_start_token_id": 0, "dropout_rate": 0.1, "eos_token_id": 1, "feed_forward_proj": "gated-gelu",
           "initializer_factor": 1.0, "is_encoder_decoder": True, "layer_norm_epsilon": 1e-06, "model_type": "t5",
           "num_decoder_layers": 3, "num_heads": 4, "num_layers": 2, "output_past": True, "pad_token_id": 0,
           "relative_attention_num_buckets": 32, "tie_word_embeddings": False, "vocab_size": 128}
FLAN_T5 = {**T5_V1_1, "dense_act_fn": "gelu_new", "is_gated_act": True, "n_positions": 512,
           "relative_attention_max_distance": 128, "torch_dtype": "float32", "transformers_version": "4.23.1",
           "use_cache": True}
MT5 = {"architectures": ["MT5ForConditionalGeneration"], "d_ff": 64, "d_kv": 8, "d_model": 32, "model_type": "mt5",
       "num_heads": 4, "num_layers": 2, "vocab_size": 128, "tokenizer_class": "T5Tokenizer"}


@pytest.mark.parametrize(("raw", "proj", "tied", "dec_layers"), [
    (T5_SMALL, "relu", True, 2), (T5_V1_1, "gated-gelu", False, 3), (FLAN_T5, "gated-gelu", False, 3),
    (MT5, "gated-gelu", False, 2),
], ids=["t5-small", "t5-v1_1", "flan-t5", "mt5"])
def test_config_from_hub_style_files(raw, proj, tied, dec_layers, caplog):
    with caplog.at_level(logging.WARNING):
        cfg = config_from_hf(raw, Path("config.json"))
    assert not caplog.records  # every field of these real-world files is known
    assert (cfg.feed_forward_proj, cfg.tie_word_embeddings, cfg.num_decoder_layers) == (proj, tied, dec_layers)
    assert (cfg.relative_attention_max_distance, cfg.decoder_start_id, cfg.pad_id, cfg.eos_id) == (128, 0, 0, 1)
    assert config_from_hf(config_to_hf(cfg), Path("x")) == cfg


@pytest.mark.parametrize(("changes", "field"), [
    ({"model_type": "bart"}, "model_type"),
    ({"feed_forward_proj": "gated-silu"}, "feed_forward_proj"),
    ({"feed_forward_proj": "gelu"}, "feed_forward_proj"),
    ({"dense_act_fn": "gelu"}, "dense_act_fn"),  # exact-erf GELU: not Sora's tanh GELU
    ({"is_gated_act": False}, "is_gated_act"),
    ({"architectures": ["T5EncoderModel"]}, "architectures"),
    ({"is_encoder_decoder": False}, "is_encoder_decoder"),
    ({"num_heads": 0}, "num_heads"),
    ({"eos_token_id": [1, 2]}, "eos_token_id"),
    ({"eos_token_id": 500}, "eos_token_id"),  # out of the vocabulary: caught by ModelConfig, named as in HF
    ({"relative_attention_max_distance": 8}, "relative_attention_max_distance"),
])
def test_unsupported_config_names_the_field(changes, field):
    raw = dict(FLAN_T5)
    if "feed_forward_proj" in changes:  # as hand-written: no dense_act_fn / is_gated_act overriding it
        del raw["dense_act_fn"], raw["is_gated_act"]
    with pytest.raises(SoraError, match=rf"config\.json: {field} "):
        config_from_hf({**raw, **changes}, Path("config.json"))


def test_unknown_config_fields_are_reported(caplog):
    with caplog.at_level(logging.WARNING):
        config_from_hf({**T5_V1_1, "rope_theta": 1e4}, Path("config.json"))
    assert "rope_theta" in caplog.text


# ---------------------------------------------------------------- bad checkpoints fail before any placement


def test_missing_config(tmp_path, no_device_put):
    with pytest.raises(SoraError, match=r"config\.json does not exist"):
        load_hf_t5(tmp_path)


@pytest.mark.parametrize(("changes", "field"), [({"model_type": "bart"}, "model_type"),
                                                ({"feed_forward_proj": "gated-silu", "dense_act_fn": None,
                                                  "is_gated_act": None}, "feed_forward_proj")])
def test_unsupported_architecture(tmp_path, no_device_put, changes, field):
    directory = copy_fixture("t5_v1_1", tmp_path)
    edit_config(directory, **changes)
    with pytest.raises(SoraError, match=rf"config\.json: {field} "):
        load_hf_t5(directory)


def test_wrong_tensor_shape(tmp_path, no_device_put):
    directory = copy_fixture("t5_v1_1", tmp_path)
    edit_tensors(directory, encoder__block__1__layer__0__SelfAttention__q__weight=np.zeros((64, 40), np.float32))
    with pytest.raises(SoraError, match=r"model\.safetensors: tensor encoder\.block\.1\.layer\.0\.SelfAttention\.q"
                                        r"\.weight has shape \[64, 40\] but .*config\.json implies \[64, 48\]"):
        load_hf_t5(directory)


def test_config_disagreeing_with_tensors(tmp_path, no_device_put):
    directory = copy_fixture("mt5", tmp_path)
    edit_config(directory, d_ff=100)
    with pytest.raises(SoraError, match=r"tensor .*DenseReluDense.*has shape \[96, 40\] .*implies \[100, 40\]"):
        load_hf_t5(directory)


def test_missing_tensor(tmp_path, no_device_put):
    directory = copy_fixture("mt5", tmp_path)
    edit_tensors(directory, drop=("decoder.block.2.layer.2.DenseReluDense.wo.weight",))
    with pytest.raises(SoraError, match=r"model\.safetensors: tensor decoder\.block\.2\.layer\.2\.DenseReluDense"
                                        r"\.wo\.weight is missing"):
        load_hf_t5(directory)


def test_unexpected_tensor(tmp_path, no_device_put):
    directory = copy_fixture("t5_v1_0", tmp_path)
    edit_tensors(directory, encoder__block__2__layer__0__layer_norm__weight=np.ones(32, np.float32))
    with pytest.raises(SoraError, match=r"unexpected tensor encoder\.block\.2\.layer\.0\.layer_norm\.weight"):
        load_hf_t5(directory)


def test_tokenizer_larger_than_embedding(tmp_path, no_device_put, tokenizer):
    directory = copy_fixture("t5_v1_0", tmp_path)
    assert tokenizer.vocab_size > 320
    (directory / "spiece.model").write_bytes(tokenizer.model_proto())
    with pytest.raises(SoraError, match=rf"spiece\.model has {tokenizer.num_pieces} pieces but .* only 320 rows"):
        load_hf_t5(directory)


def test_no_safetensors(tmp_path, no_device_put):
    directory = copy_fixture("t5_v1_0", tmp_path)
    (directory / "model.safetensors").rename(directory / "pytorch_model.bin")
    with pytest.raises(SoraError, match=r"pytorch_model\.bin but no model\.safetensors.*safe_serialization=True"):
        load_hf_t5(directory)


def test_index_naming_a_missing_shard(tmp_path, no_device_put):
    directory = copy_fixture("t5_v1_0", tmp_path)
    (directory / "model.safetensors").unlink()
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"shared.weight": "a.st"}}))
    with pytest.raises(SoraError, match=r"index\.json: weight_map names shard a\.st"):
        load_hf_t5(directory)


def test_indivisible_sharding(no_device_put):
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 8})
    with pytest.raises(SoraError, match=r"params/encoder/relpos_bias/embedding of shape \(32, 3\) does not divide"):
        load_hf_t5(FIXTURES / "t5_v1_0", shardings=NamedSharding(mesh, PartitionSpec(None, "tensor")))


def test_tied_head_must_equal_shared(tmp_path, no_device_put):
    directory = copy_fixture("t5_v1_0", tmp_path)
    shared = read_tensors(directory / "model.safetensors")["shared.weight"]
    edit_tensors(directory, lm_head__weight=shared + 1)
    with pytest.raises(SoraError, match=r"tensor lm_head\.weight differs from shared\.weight .*tie_word_embeddings"):
        load_hf_t5(directory)


def test_tolerated_duplicates_and_leftovers(tmp_path):
    """Tied copies of shared.weight, an lm_head equal to it, and the stale cross-attention bias of old T5
    checkpoints load like the clean file; so does a file keeping only encoder.embed_tokens.weight."""
    directory = copy_fixture("t5_v1_0", tmp_path)
    tensors = read_tensors(directory / "model.safetensors")
    shared = tensors["shared.weight"]
    bias = tensors["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    edit_tensors(directory, lm_head__weight=shared, encoder__embed_tokens__weight=shared,
                 decoder__embed_tokens__weight=shared,
                 decoder__block__0__layer__1__EncDecAttention__relative_attention_bias__weight=bias)
    _, params, _ = load_hf_t5(directory)
    _, reference, _ = imported("t5_v1_0")
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(reference), strict=True))
    edit_tensors(directory, drop=("shared.weight", "decoder.embed_tokens.weight", "lm_head.weight"))
    _, params, _ = load_hf_t5(directory)
    np.testing.assert_array_equal(params["shared"]["embedding"], shared)


def test_export_rejects_mismatched_params(tmp_path):
    cfg, params, _ = imported("t5_v1_0")
    other = dataclasses.replace(cfg, num_decoder_layers=3)
    with pytest.raises(SoraError, match=r"save_hf_t5: params has no leaf decoder/layers_2/"):
        save_hf_t5(tmp_path, other, params)
    assert not (tmp_path / "model.safetensors").exists()


# ---------------------------------------------------------------- the export loads in transformers (optional)


@pytest.mark.parametrize("variant", ["t5_v1_0", "mt5"])
def test_export_loads_in_transformers(variant, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    cfg, params, _ = imported(variant, True)
    # A Sora-trained model: perturb the imported params so the check is not only HF's weights coming back.
    params = jax.tree.map(lambda x: x * 1.01, params)
    save_hf_t5(tmp_path, cfg, params)

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(handler)
    try:
        model, info = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    finally:
        hf_logger.removeHandler(handler)
    assert not any(info.values()), info
    messages = " ".join(r.getMessage() for r in records if r.levelno >= logging.WARNING)
    for word in ("missing", "unexpected", "not used", "newly initialized", "not initialized"):
        assert word not in messages.lower(), messages

    ref = expected(variant)
    with torch.no_grad():
        hf_logits = model.eval()(**{k: torch.from_numpy(ref[k]) for k in (
            "input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")}).logits.numpy()
    logits = np.asarray(forward(cfg)(params, ref["input_ids"], ref["decoder_input_ids"]))
    valid = ref["decoder_attention_mask"].astype(bool)
    assert np.abs(logits - hf_logits)[valid].max() <= TOLERANCE
