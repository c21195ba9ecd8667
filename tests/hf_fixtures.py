"""Reading the committed Hugging Face fixtures (tests/fixtures/hf_*/<variant>/: config.json, safetensors,
expected.npz with transformers' logits and greedy tokens), shared by the T5, T5Gemma and T5Gemma 2 parity tests."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import traverse_util

from sora_jax.decoding.search import beam_search, greedy_decode, sample_decode
from sora_jax.interop import load_hf_t5, save_hf_t5
from sora_jax.model import EncoderDecoder, ModelConfig, shift_right

FAST_COMPILE = {"xla_backend_optimization_level": 0}  # Tiny models: compile time dominates, not run time.
TOLERANCE = 1e-4  # T5Gemma parity: max |sora - hf| / max |hf|


@functools.cache
def expected(fixtures: Path, variant: str) -> dict[str, np.ndarray]:
    """transformers' reference outputs of one fixture."""
    with np.load(fixtures / variant / "expected.npz") as data:
        return dict(data)


@functools.cache
def imported(fixtures: Path, variant: str, scan_layers: bool = False):
    """(ModelConfig, params, tokenizer) of one fixture, loaded once per session."""
    return load_hf_t5(fixtures / variant, scan_layers=scan_layers)


@functools.cache
def forward(cfg: ModelConfig):
    """The jitted teacher-forced forward pass of a model config: (params, encoder ids, decoder ids) -> logits."""
    model = EncoderDecoder(cfg)
    return jax.jit(lambda p, enc, dec: model.apply({"params": p}, enc, dec), compiler_options=FAST_COMPILE)


def rel_diff(logits: np.ndarray, ref: dict[str, np.ndarray]) -> float:
    """max |sora - hf| / max |hf| over the decoder positions transformers does not mask."""
    valid = ref["decoder_attention_mask"].astype(bool)  # transformers masks decoder padding; Sora needs not
    return float(np.abs(logits - ref["logits"])[valid].max() / np.abs(ref["logits"])[valid].max())


def flat(tree) -> dict[tuple[str, ...], np.ndarray]:
    """A param tree as {path: numpy array}."""
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def broken_copy(fixtures: Path, tmp_path: Path, variant: str, **edits) -> Path:
    """A copy of a fixture whose config.json has `edits` applied (`__` reaches into nested objects)."""
    out = tmp_path / variant
    shutil.copytree(fixtures / variant, out)
    config = json.loads((out / "config.json").read_text())
    for key, value in edits.items():
        *parents, leaf = key.split("__")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    (out / "config.json").write_text(json.dumps(config))
    return out


def check_logits_match_transformers(fixtures: Path, variant: str, scan: bool) -> None:
    """Teacher-forced float32 logits within TOLERANCE (relative) of transformers'."""
    cfg, params, _ = imported(fixtures, variant, scan)
    ref = expected(fixtures, variant)
    logits = np.asarray(forward(cfg)(params, ref["input_ids"], ref["decoder_input_ids"]))
    diff = rel_diff(logits, ref)
    assert diff <= TOLERANCE, f"{variant}: max relative |sora - hf| = {diff}"


def check_params_tree_matches_model_init(fixtures: Path, variant: str) -> None:
    """The imported params have the tree, shapes and dtypes of the model's own init, scanned and not."""
    for scan in (False, True):
        cfg, params, _ = imported(fixtures, variant, scan)
        tokens = jnp.ones((1, 4), jnp.int32)
        abstract = nn.unbox(jax.eval_shape(EncoderDecoder(cfg).init, jax.random.key(0), tokens, tokens)["params"])
        got = jax.tree.map(lambda x: (x.shape, x.dtype), params)
        assert got == jax.tree.map(lambda x: (x.shape, x.dtype), abstract)


def check_greedy_decode_matches_generate(fixtures: Path, variant: str, scan: bool) -> None:
    """Cached greedy decoding gives transformers' `generate` tokens, with outputs longer than the window."""
    cfg, params, _ = imported(fixtures, variant, scan)
    ref = expected(fixtures, variant)
    hf = ref["generated"]
    assert (hf[:, 0] == cfg.decoder_start_id).all() and (hf[:, 1:] == cfg.eos_id).any()
    max_length = int(ref["max_new_tokens"])
    assert max_length > cfg.sliding_window + 1  # the cache outgrows the window
    decode = jax.jit(functools.partial(greedy_decode, model=EncoderDecoder(cfg), max_length=max_length),
                     compiler_options=FAST_COMPILE)
    tokens = np.asarray(decode(params, jnp.asarray(ref["input_ids"])))
    np.testing.assert_array_equal(tokens[:, : hf.shape[1] - 1], hf[:, 1:])
    assert (tokens[:, hf.shape[1] - 1:] == cfg.pad_id).all()


def check_learns_to_copy(cfg: ModelConfig) -> None:
    """40 Adam steps on copying the first 6 input tokens halve the loss of a freshly initialised model."""
    model = EncoderDecoder(cfg)
    rng = np.random.default_rng(0)
    enc = jnp.asarray(rng.integers(4, cfg.vocab_size, (8, 24)))
    targets = enc[:, :6]  # copy the first tokens: learnable in a few dozen steps
    params = nn.unbox(jax.jit(model.init, compiler_options=FAST_COMPILE)(jax.random.key(0), enc, targets)["params"])
    optimizer = optax.adam(3e-3)

    def loss_fn(p):
        logits = model.apply({"params": p}, enc, shift_right(targets, cfg.decoder_start_id))
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def step(p, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    opt_state, losses = optimizer.init(params), []
    for _ in range(40):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses


def decode_step_by_step(cfg: ModelConfig, params, enc, decoder_inputs) -> tuple[jax.Array, dict]:
    """Logits [B, L, V] of `decoder_inputs` fed one token at a time through the KV cache, and the cache as the first
    call made it (to compare with the full forward pass)."""
    model = EncoderDecoder(cfg)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def start(enc, first):
        encoded = model.apply({"params": params}, enc, method=model.encode)
        _, variables = model.apply({"params": params}, encoded, enc, first, decode=True,
                                   max_decode_length=decoder_inputs.shape[1], method=model.decode, mutable=["cache"])
        return encoded, variables

    encoded, variables = start(enc, decoder_inputs[:, :1])
    step = jax.jit(lambda cache, tokens: model.apply({"params": params, "cache": cache}, encoded, enc, tokens,
                                                     decode=True, method=model.decode, mutable=["cache"]),
                   compiler_options=FAST_COMPILE)
    first_cache = cache = variables["cache"]
    steps = []
    for i in range(decoder_inputs.shape[1]):
        logits, variables = step(cache, decoder_inputs[:, i:i + 1])
        cache = variables["cache"]
        steps.append(logits[:, 0])
    return jnp.stack(steps, axis=1), first_cache


def self_cache_lengths(cfg: ModelConfig, cache: dict) -> dict[bool, set[int]]:
    """{whether a decoder layer is sliding: the lengths of those layers' self-attention buffers}."""
    sliding = cfg.sliding_layers("decoder")
    if cfg.scan_layers:  # One scanned buffer for every layer.
        length = cache["decoder"]["layers"]["self_attention"]["cached_key"].shape[2]
        return {flag: {length} for flag in set(sliding)}
    lengths: dict[bool, set[int]] = {}
    for i, flag in enumerate(sliding):
        lengths.setdefault(flag, set()).add(cache["decoder"][f"layers_{i}"]["self_attention"]["cached_key"].shape[1])
    return lengths


def check_beam_search_and_sampling(cfg: ModelConfig, params, enc) -> None:
    """Beam search of width 1 is greedy; width 3 scores its best beam as its teacher-forced log-probability and
    never below greedy's; top-k=1 sampling is greedy."""
    model = EncoderDecoder(cfg)

    def jitted(fn, **kwargs):
        return jax.jit(functools.partial(fn, model=model, max_length=6, **kwargs), compiler_options=FAST_COMPILE)

    greedy = jitted(greedy_decode)(params, enc)
    one, _ = jitted(beam_search, beam_size=1, alpha=0.0)(params, enc)
    np.testing.assert_array_equal(one[:, 0], greedy)
    beams, scores = jitted(beam_search, beam_size=3, alpha=0.0)(params, enc)

    def log_prob(tokens_BL):  # teacher-forced total log-probability up to and including EOS
        logp = jax.nn.log_softmax(forward(cfg)(params, enc, shift_right(tokens_BL, cfg.decoder_start_id)))
        picked = jnp.take_along_axis(logp, tokens_BL[..., None], axis=-1)[..., 0]
        ended = jnp.cumsum(tokens_BL == cfg.eos_id, axis=1) - (tokens_BL == cfg.eos_id)
        return jnp.sum(jnp.where(ended == 0, picked, 0.0), axis=1)

    np.testing.assert_allclose(scores[:, 0], log_prob(beams[:, 0]), rtol=1e-4, atol=1e-4)
    assert (scores[:, 0] >= log_prob(greedy) - 1e-5).all()
    sampled = jitted(sample_decode, top_k=1)(params, enc, jax.random.key(0))
    np.testing.assert_array_equal(sampled, greedy)


def check_export_round_trip(directory: Path, cfg: ModelConfig, params, tokenizer, scan: bool) -> None:
    """save_hf_t5 then load_hf_t5 gives back the same config, params (bitwise) and tokenizer presence."""
    save_hf_t5(directory, cfg, params, tokenizer)
    cfg2, params2, tokenizer2 = load_hf_t5(directory, scan_layers=scan)
    assert cfg2 == cfg
    a, b = flat(params), flat(params2)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert (tokenizer2 is None) == (tokenizer is None)
