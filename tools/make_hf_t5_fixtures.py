"""Builds the golden Hugging Face T5 fixtures in tests/fixtures/hf_t5/ (run by hand, not by the tests).

The reference implementation, transformers' PyTorch T5, is the oracle: for each supported variant this builds a
tiny random-weight model from a config (no download), saves it with save_pretrained(safe_serialization=True)
into tests/fixtures/hf_t5/<variant>/, and records in expected.npz fixed inputs with HF's float32 logits and
greedy `generate` tokens. tests/test_interop.py then checks Sora against those files without torch.

It also checks Sora's exporter: import with load_hf_t5, export with save_hf_t5, reload the export with
transformers (no missing/unexpected keys allowed) and compare logits; it fails if any max diff exceeds 1e-4.

PyTorch and transformers are NOT Sora dependencies. To run:
    pip install torch==2.13.0 "transformers>=4.44,<5"
    python tools/make_hf_t5_fixtures.py
    pip uninstall -y transformers torch tokenizers huggingface-hub hf-xet   # back to Sora's own dependencies
Seeds are fixed, so a rerun with the same versions rewrites the same fixtures.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "hf_t5"
TOLERANCE = 1e-4
MAX_NEW_TOKENS = 8

# Tiny models covering each architecture. Sizes are chosen so that no two of d_model, num_heads * d_kv and d_ff
# coincide (a transposed or mis-reshaped tensor cannot go unnoticed), and so that the short fixture sequences
# reach the log-spaced relative-position buckets.
VARIANTS = {
    # T5 v1.0 (t5-small etc.): ReLU MLP, tied embeddings with the d_model**-0.5 head scaling; with a spiece.model.
    "t5_v1_0": dict(
        cls="T5", seed=0, tokenizer=True,
        config=dict(vocab_size=320, d_model=32, d_kv=12, d_ff=72, num_layers=2, num_heads=3,
                    feed_forward_proj="relu", decoder_start_token_id=0),
    ),
    # T5 v1.1 / Flan-T5: gated-GELU MLP, untied lm_head, small bucket tables.
    "t5_v1_1": dict(
        cls="T5", seed=1, tokenizer=False,
        config=dict(vocab_size=384, d_model=48, d_kv=16, d_ff=80, num_layers=2, num_heads=4,
                    relative_attention_num_buckets=16, relative_attention_max_distance=32,
                    feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0),
    ),
    # mT5: MT5Config (model_type "mt5", gated-GELU, untied); a small vocabulary, and a deeper decoder.
    "mt5": dict(
        cls="MT5", seed=2, tokenizer=False,
        config=dict(vocab_size=512, d_model=40, d_kv=8, d_ff=96, num_layers=2, num_decoder_layers=3, num_heads=4,
                    relative_attention_num_buckets=8, relative_attention_max_distance=20),
    ),
}

TOKENIZER_TEXT = [
    "the quick brown fox jumps over the lazy dog", "a stitch in time saves nine",
    "all that glitters is not gold", "translate english to german: the house is wonderful",
    "summarize: sora imports t5 checkpoints from hugging face", "question: what is the capital of france",
]


def make_inputs(vocab_size: int, seed: int) -> dict[str, np.ndarray]:
    """3 rows of different lengths, right-padded with 0; no real token is 0 (Sora masks tokens == pad_id)."""
    rng = np.random.default_rng(seed)
    enc_lengths, dec_lengths, enc_width, dec_width = (10, 7, 3), (6, 4, 2), 12, 7
    input_ids = np.zeros((3, enc_width), np.int64)
    decoder_input_ids = np.zeros((3, dec_width), np.int64)
    for row, (n_enc, n_dec) in enumerate(zip(enc_lengths, dec_lengths, strict=True)):
        input_ids[row, : n_enc - 1] = rng.integers(3, vocab_size, n_enc - 1)
        input_ids[row, n_enc - 1] = 1  # EOS, as a tokenized input ends
        decoder_input_ids[row, 1:n_dec] = rng.integers(3, vocab_size, n_dec - 1)  # position 0: start token 0
    decoder_attention_mask = np.zeros_like(decoder_input_ids)
    for row, n_dec in enumerate(dec_lengths):
        decoder_attention_mask[row, :n_dec] = 1
    return dict(input_ids=input_ids, attention_mask=(input_ids != 0).astype(np.int64),
                decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask)


def build(name: str, spec: dict) -> dict[str, float]:
    import torch
    import transformers

    from sora_jax.data.tokenizer import train_tokenizer

    torch.manual_seed(spec["seed"])
    config = getattr(transformers, f"{spec['cls']}Config")(**spec["config"])
    model = getattr(transformers, f"{spec['cls']}ForConditionalGeneration")(config).eval()
    with torch.no_grad():
        # Layer norms start at exactly 1, which would hide a norm mapped to the wrong sublayer: perturb them.
        for param_name, param in model.named_parameters():
            if param_name.endswith("layer_norm.weight"):
                param.uniform_(0.5, 1.5)
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out, safe_serialization=True)
    if spec["tokenizer"]:
        tokenizer = train_tokenizer(TOKENIZER_TEXT, vocab_size=300, character_coverage=1.0, seed=0)
        assert tokenizer.vocab_size <= config.vocab_size, tokenizer.vocab_size
        tokenizer.save(out / "spiece.model")

    inputs = make_inputs(config.vocab_size, spec["seed"] + 100)
    torch_inputs = {k: torch.from_numpy(v) for k, v in inputs.items()}
    generated = greedy(model, config, torch_inputs)
    if not config.tie_word_embeddings:
        # Random weights almost never pick EOS. Make EOS's head row a slightly longer copy of the row of the
        # token row 0 picks at step 4, so that row finishes early and the fixture covers padding after EOS.
        with torch.no_grad():
            model.lm_head.weight[config.eos_token_id] = 1.05 * model.lm_head.weight[int(generated[0, 4])]
        model.save_pretrained(out, safe_serialization=True)
        generated = greedy(model, config, torch_inputs)
        assert (generated == config.eos_token_id).any(), generated
    with torch.no_grad():
        logits = model(**torch_inputs).logits.float().numpy()
    np.savez_compressed(out / "expected.npz", **inputs, logits=logits.astype(np.float32), generated=generated,
                        max_new_tokens=np.int64(MAX_NEW_TOKENS))
    return {"sora_vs_hf": sora_logits_diff(out, inputs, logits), "export_vs_hf": export_diff(out, torch_inputs, logits)}


def greedy(model, config, torch_inputs: dict) -> np.ndarray:
    """HF greedy generation: [B, 1 + n], starting with the decoder start token, padded with 0 after EOS."""
    import torch

    # transformers 4.57 sizes the decoder's KV cache by num_layers, which breaks generate when
    # num_decoder_layers differs (mT5 here); without the cache generate recomputes each step, same tokens.
    use_cache = config.num_decoder_layers == config.num_layers
    with torch.no_grad():
        return model.generate(input_ids=torch_inputs["input_ids"], attention_mask=torch_inputs["attention_mask"],
                              max_new_tokens=MAX_NEW_TOKENS, num_beams=1, do_sample=False,
                              use_cache=use_cache).numpy()


def _valid(inputs: dict[str, np.ndarray]) -> np.ndarray:
    return inputs["decoder_attention_mask"].astype(bool)


def sora_logits_diff(directory: Path, inputs: dict[str, np.ndarray], hf_logits: np.ndarray) -> float:
    """Max |Sora - HF| logits over non-padded decoder positions."""
    from sora_jax.interop import load_hf_t5
    from sora_jax.model import EncoderDecoder

    cfg, params, _ = load_hf_t5(directory)
    logits = EncoderDecoder(cfg).apply({"params": params}, inputs["input_ids"], inputs["decoder_input_ids"])
    return float(np.abs(np.asarray(logits) - hf_logits)[_valid(inputs)].max())


def export_diff(directory: Path, torch_inputs: dict, hf_logits: np.ndarray) -> float:
    """Sora import -> save_hf_t5 -> transformers load (no key warnings) -> max logits diff to the original."""
    import torch
    import transformers

    from sora_jax.interop import load_hf_t5, save_hf_t5

    cfg, params, tokenizer = load_hf_t5(directory)
    with tempfile.TemporaryDirectory() as tmp:
        save_hf_t5(tmp, cfg, params, tokenizer)
        model, info = transformers.T5ForConditionalGeneration.from_pretrained(tmp, output_loading_info=True)
        problems = {k: v for k, v in info.items() if v}
        if problems:
            raise SystemExit(f"{directory.name}: transformers reports {problems} loading Sora's export")
        with torch.no_grad():
            logits = model.eval()(**torch_inputs).logits.float().numpy()
    valid = torch_inputs["decoder_attention_mask"].numpy().astype(bool)
    return float(np.abs(logits - hf_logits)[valid].max())


def main() -> None:
    sys.path.insert(0, str(ROOT))
    failed = False
    for name, spec in VARIANTS.items():
        diffs = build(name, spec)
        size = sum(f.stat().st_size for f in (OUT / name).iterdir())
        status = "ok" if max(diffs.values()) <= TOLERANCE else "FAIL"
        failed |= status == "FAIL"
        print(f"{name:8s} {size / 1024:7.1f} KiB  max|sora-hf| {diffs['sora_vs_hf']:.2e}  "
              f"max|export-hf| {diffs['export_vs_hf']:.2e}  {status}")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"total {total / 1024:.1f} KiB in {OUT}")
    if failed:
        raise SystemExit(f"a logits difference exceeds {TOLERANCE}")


if __name__ == "__main__":
    main()
