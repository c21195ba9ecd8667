"""Greedy, beam and sampling decoders: agreement with uncached/exhaustive references, filters, early exit."""

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_params import random_params

from sora_jax.decoding import search
from sora_jax.decoding.search import DecodeOptions, beam_search, decode, greedy_decode, length_penalty, sample_decode
from sora_jax.errors import SoraError
from sora_jax.model import PRESETS, EncoderDecoder, ModelConfig, shift_right

# Compiling at XLA optimisation level 0 keeps each decoder's compilation around a second on CPU.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
EOS = 1
# Inputs of different lengths (right-padded with 0), so the cross-attention padding mask matters.
ENC = jnp.array([[5, 6, 7, 8, 9, 10, 0, 0], [11, 12, 13, 0, 0, 0, 0, 0],
                 [3, 4, 5, 6, 7, 8, 9, 10], [20, 21, 0, 0, 0, 0, 0, 0]])
MAX_LEN = 10


@functools.cache
def make_model(vocab: int = 32, scan: bool = False) -> EncoderDecoder:
    return EncoderDecoder(ModelConfig(vocab_size=vocab, scan_layers=scan, **PRESETS["tiny"]))


@functools.cache
def params32() -> dict:
    return random_params(make_model())


def eos_first_params() -> dict:
    """A model whose decoder ignores its inputs and puts nearly all mass on EOS at every step."""
    params = jax.tree.map(lambda x: x, params32())
    params["shared"]["embedding"] = jnp.ones_like(params["shared"]["embedding"])
    decoder = params["decoder"]
    for i in range(make_model().config.num_decoder_layers):
        layer = decoder[f"layers_{i}"]
        for kernel in (layer["self_attention"]["o"], layer["cross_attention"]["o"], layer["mlp"]["wo"]):
            kernel["kernel"] = jnp.zeros_like(kernel["kernel"])
    # The residual stream is then the all-ones embedding, so logits are column sums of the head.
    decoder["logits_dense"]["kernel"] = decoder["logits_dense"]["kernel"].at[:, EOS].set(1.0)
    return params


# Jitted decoders, built once per static configuration and reused across tests.
@functools.cache
def greedy_fn(model, max_length=MAX_LEN):
    return jit(functools.partial(greedy_decode, model=model, max_length=max_length))


@functools.cache
def beam_fn(model, beam_size, max_length=MAX_LEN, alpha=0.6):
    return jit(functools.partial(beam_search, model=model, max_length=max_length, beam_size=beam_size, alpha=alpha))


@functools.cache
def sample_fn(model, max_length=MAX_LEN, **filters):
    return jit(functools.partial(sample_decode, model=model, max_length=max_length, **filters))


@functools.cache
def forward_fn(model):
    return jit(lambda p, enc, dec: model.apply({"params": p}, enc, dec))


def token_log_probs(model, params, enc, tokens):
    """Teacher-forced log p(tokens[t] | enc, tokens[:t]) [B, L] and log-softmax [B, L, V], as numpy."""
    logp = jax.nn.log_softmax(forward_fn(model)(params, enc, shift_right(tokens, model.config.decoder_start_id)))
    logp = np.asarray(logp)
    return np.take_along_axis(logp, np.asarray(tokens)[..., None], axis=-1)[..., 0], logp


def hyp_lengths(tokens):
    """Length of each hypothesis: up to and including its first EOS, else the full length."""
    tokens = np.asarray(tokens)
    has_eos = (tokens == EOS).any(-1)
    return np.where(has_eos, (tokens == EOS).argmax(-1) + 1, tokens.shape[-1])


def penalised_scores(model, params, enc, tokens, alpha=0.6):
    """log-prob of each hypothesis (EOS included) / GNMT length penalty, from the uncached forward pass."""
    tok_logp, _ = token_log_probs(model, params, enc, tokens)
    length = hyp_lengths(tokens)
    mask = np.arange(tokens.shape[-1])[None, :] < length[:, None]
    return (tok_logp * mask).sum(-1) / np.asarray(length_penalty(length, alpha))


def assert_padded_after_eos(tokens):
    tokens = np.asarray(tokens).reshape(-1, np.shape(tokens)[-1])
    length = hyp_lengths(tokens)
    for row, n in zip(tokens, length, strict=True):
        assert (row[n:] == 0).all(), row


def reference_greedy(model, params, enc, max_length):
    """No cache: each step runs the whole teacher-forced forward pass over the prefix, takes the argmax."""
    batch = enc.shape[0]
    # The decoder is causal, so zeros after the prefix do not change the logits at the prefix's end; a fixed
    # shape means one compilation for all steps.
    dec_in = np.full((batch, max_length), model.config.decoder_start_id)
    out = np.zeros((batch, max_length), np.int32)
    done = np.zeros(batch, bool)
    for t in range(max_length):
        logits = np.asarray(forward_fn(model)(params, enc, jnp.asarray(dec_in)))
        nxt = np.where(done, 0, logits[:, t].argmax(-1))
        out[:, t] = nxt
        done |= nxt == EOS
        if t + 1 < max_length:
            dec_in[:, t + 1] = nxt
    return out


def test_greedy_with_cache_equals_uncached_reference():
    model, params = make_model(), params32()
    got = np.asarray(greedy_fn(model)(params, ENC))
    want = reference_greedy(model, params, ENC, MAX_LEN)
    np.testing.assert_array_equal(got, want)
    # Non-trivial: some rows stop early at different steps (then pad), some run to max_length.
    lengths = hyp_lengths(got)
    assert len(set(lengths.tolist())) >= 3 and lengths.max() == MAX_LEN, got
    assert_padded_after_eos(got)


@pytest.mark.parametrize("alpha", [0.6, 3.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_beam_size_one_equals_greedy(seed, alpha):
    # A strong length penalty tempts the search to look past an EOS greedy takes, and an EOS that is only
    # the runner-up must not end the hypothesis: with one beam, neither may happen.
    model = make_model()
    params = random_params(model, seed)
    tokens, scores = beam_fn(model, 1, alpha=alpha)(params, ENC)
    assert tokens.shape == (ENC.shape[0], 1, MAX_LEN) and scores.dtype == jnp.float32
    greedy = greedy_fn(model)(params, ENC)
    np.testing.assert_array_equal(tokens[:, 0], greedy)
    assert (hyp_lengths(greedy) < MAX_LEN).any()
    if seed == 1:  # these weights make EOS the runner-up at several steps of greedy's path
        _, logp = token_log_probs(model, params, ENC, greedy)
        eos_rank = (logp > logp[..., EOS : EOS + 1]).sum(-1)
        live = np.arange(MAX_LEN)[None, :] < hyp_lengths(greedy)[:, None]
        assert (eos_rank[live] == 1).sum() >= 3


def test_beam_scores_sorted_consistent_and_at_least_greedy():
    model, params = make_model(), params32()
    tokens, scores = (np.asarray(x) for x in beam_fn(model, 4)(params, ENC))
    assert tokens.shape == (ENC.shape[0], 4, MAX_LEN) and tokens.dtype == np.int32
    assert (scores[:, :-1] >= scores[:, 1:]).all(), scores
    assert np.isfinite(scores[:, 0]).all()
    # Every returned hypothesis's score is its uncached log-prob under the length penalty.
    for n in range(4):
        live = np.isfinite(scores[:, n])
        rescored = penalised_scores(model, params, ENC, jnp.asarray(tokens[:, n]))
        np.testing.assert_allclose(scores[live, n], rescored[live], atol=1e-4)
        assert (tokens[~live, n] == 0).all()
    assert_padded_after_eos(tokens)
    greedy_scores = penalised_scores(model, params, ENC, greedy_fn(model)(params, ENC))
    assert (scores[:, 0] >= greedy_scores - 1e-5).all()
    assert (scores[:, 0] > greedy_scores + 1e-3).any(), "the search should beat greedy somewhere"


def to_scanned(params: dict) -> dict:
    """The same weights in the scan_layers=True layout: layers_N subtrees stacked on a leading axis."""
    out = {}
    for stack, sub in params.items():
        if not isinstance(sub, dict) or "layers_0" not in sub:
            out[stack] = sub
            continue
        layers = [sub[k] for k in sorted(k for k in sub if k.startswith("layers_"))]
        out[stack] = {k: v for k, v in sub.items() if not k.startswith("layers_")}
        out[stack]["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return out


def test_beam_search_with_scanned_layers_matches_unscanned():
    # Scanned caches stack layers on axis 1, so beam expansion and reordering along axis 0 must still work.
    params = params32()
    tokens, scores = beam_fn(make_model(), 4)(params, ENC)
    scan_tokens, scan_scores = beam_fn(make_model(scan=True), 4)(to_scanned(params), ENC)
    np.testing.assert_array_equal(scan_tokens, tokens)
    np.testing.assert_allclose(scan_scores, scores, atol=1e-5)


@pytest.mark.parametrize("seed, alpha", [(0, 0.6), (1, 0.6), (1, 3.0), (3, 3.0)])
def test_beam_search_equals_exhaustive_search(seed, alpha):
    # alpha 3 favours long hypotheses strongly: stopping on an unsound bound would miss them.
    vocab, max_length = 6, 3
    model = make_model(vocab)
    params = random_params(model, seed)
    enc = jnp.array([[5, 4, 3, 2, 0, 0], [2, 3, 0, 0, 0, 0], [3, 4, 5, 2, 3, 4]])
    # A beam as wide as all length-2 prefixes keeps every hypothesis alive, so the search is exact.
    tokens, scores = beam_fn(model, vocab**2, max_length, alpha)(params, enc)
    every_BL = np.array(list(itertools.product(range(vocab), repeat=max_length)), np.int32)
    nontrivial = 0
    for row in range(enc.shape[0]):
        enc_rows = jnp.repeat(enc[row : row + 1], every_BL.shape[0], axis=0)
        score = penalised_scores(model, params, enc_rows, jnp.asarray(every_BL), alpha)
        best = int(np.argmax(score))
        want = np.where(np.arange(max_length) < hyp_lengths(every_BL)[best], every_BL[best], 0)
        np.testing.assert_array_equal(tokens[row, 0], want)
        np.testing.assert_allclose(scores[row, 0], score[best], atol=1e-4)
        # Greedy's path through the same table: the search must be doing more than following it.
        _, logp = token_log_probs(model, params, enc_rows, jnp.asarray(every_BL))
        prefix = []
        for t in range(max_length):
            match = next(i for i in range(every_BL.shape[0]) if list(every_BL[i, :t]) == prefix)
            prefix.append(int(np.argmax(logp[match, t])))
            if prefix[-1] == EOS:
                break
        nontrivial += list(want[: len(prefix)]) != prefix or hyp_lengths(want[None])[0] != len(prefix)
    assert nontrivial >= 1


def test_sampling_is_reproducible_and_seed_dependent():
    model, params = make_model(), params32()
    sample = sample_fn(model)
    a = sample(params, ENC, jax.random.key(0))
    np.testing.assert_array_equal(a, sample(params, ENC, jax.random.key(0)))
    assert not np.array_equal(a, sample(params, ENC, jax.random.key(1)))
    assert a.shape == (ENC.shape[0], MAX_LEN) and a.dtype == jnp.int32
    assert_padded_after_eos(a)
    assert not np.array_equal(a, greedy_fn(model)(params, ENC))


@pytest.mark.parametrize("filters", [dict(top_k=1), dict(top_p=1e-6), dict(temperature=0.0)])
def test_degenerate_sampling_is_greedy(filters):
    model, params = make_model(), params32()
    np.testing.assert_array_equal(sample_fn(model, **filters)(params, ENC, jax.random.key(3)),
                                  greedy_fn(model)(params, ENC))


def test_top_k_samples_only_among_the_k_most_likely():
    model, params = make_model(), params32()
    sample = sample_fn(model, temperature=2.0, top_k=3)
    ranks = []
    for seed in range(3):
        tokens = sample(params, ENC, jax.random.key(seed))
        _, logp = token_log_probs(model, params, ENC, tokens)
        length = hyp_lengths(tokens)
        for b in range(ENC.shape[0]):
            for t in range(length[b]):
                # Rank of the sampled token among the teacher-forced logits of its own prefix.
                ranks.append(int((logp[b, t] > logp[b, t, tokens[b, t]]).sum()))
    assert max(ranks) <= 2
    assert set(ranks) == {0, 1, 2}, "a hot temperature should draw every allowed rank"


def test_temperature_and_nucleus_give_the_renormalised_distribution():
    model, params = make_model(), params32()
    temperature, top_p, draws = 0.7, 0.8, 4000
    logits = np.asarray(forward_fn(model)(params, ENC, jnp.zeros((ENC.shape[0], MAX_LEN), jnp.int32)))[0, 0]
    probs = np.asarray(jax.nn.softmax(logits / temperature))
    order = np.argsort(-probs)
    nucleus = order[: int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1]
    want = np.zeros_like(probs)
    want[nucleus] = probs[nucleus] / probs[nucleus].sum()
    assert 2 <= len(nucleus) < len(probs)
    sample = sample_fn(model, max_length=1, temperature=temperature, top_p=top_p)
    first = np.asarray(sample(params, jnp.repeat(ENC[:1], draws, axis=0), jax.random.key(0)))[:, 0]
    freq = np.bincount(first, minlength=len(probs)) / draws
    assert set(np.unique(first)) <= set(nucleus.tolist())
    np.testing.assert_allclose(freq, want, atol=0.03)


def test_loops_stop_as_soon_as_every_row_emits_eos():
    model, params = make_model(), eos_first_params()
    batch, long = ENC.shape[0], 1000
    greedy = jit(functools.partial(search._token_loop, model=model, max_length=long, choose=search._argmax))
    tokens, steps = greedy(params, ENC)
    beam = jit(functools.partial(search._beam_loop, model=model, max_length=long, beam_size=4, alpha=0.6))
    beams, scores, beam_steps = beam(params, ENC)
    sample = jit(functools.partial(search._sample_loop, model=model, max_length=long, temperature=1.0,
                                   top_k=0, top_p=1.0))
    samples, sample_steps = sample(params, ENC, jax.random.key(0))
    want = np.zeros((batch, long), np.int32)
    want[:, 0] = EOS
    assert int(steps) == int(beam_steps) == int(sample_steps) == 1
    np.testing.assert_array_equal(tokens, want)
    np.testing.assert_array_equal(samples, want)
    np.testing.assert_array_equal(beams[:, 0], want)
    assert beams.shape == (batch, 4, long)
    assert np.isfinite(scores[:, 0]).all() and np.isneginf(scores[:, 1:]).all()


@pytest.mark.parametrize("field, value", [("beam_size", 0), ("beam_size", 2.5), ("top_p", 0.0), ("top_p", 1.5),
                                          ("temperature", -0.1), ("method", "nucleus"), ("max_length", 0),
                                          ("top_k", -1), ("alpha", float("nan"))])
def test_decode_options_validation(field, value):
    with pytest.raises(SoraError, match=field):
        DecodeOptions(**{"max_length": 8, field: value})


def test_decode_options_are_hashable_and_frozen():
    a = DecodeOptions(method="beam", max_length=8)
    assert a == DecodeOptions(method="beam", max_length=8) and hash(a) == hash(dataclasses.replace(a))
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.beam_size = 2
    with pytest.raises(SoraError, match="DecodeOptions"):
        decode(params32(), ENC, {"method": "greedy"}, model=make_model())


def test_decode_dispatches_under_jit_with_static_options():
    model, params = make_model(), params32()
    run = jit(decode, static_argnames=("options", "model"))
    np.testing.assert_array_equal(run(params, ENC, DecodeOptions(max_length=MAX_LEN), model=model),
                                  greedy_fn(model)(params, ENC))
    best = run(params, ENC, DecodeOptions(method="beam", beam_size=4, max_length=MAX_LEN), model=model)
    np.testing.assert_array_equal(best, beam_fn(model, 4)(params, ENC)[0][:, 0])
    sampled = run(params, ENC, DecodeOptions(method="sample", seed=5, max_length=MAX_LEN), model=model)
    np.testing.assert_array_equal(sampled, sample_fn(model)(params, ENC, jax.random.key(5)))
