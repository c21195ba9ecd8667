"""Builds the golden Hugging Face T5Gemma 2 fixtures in tests/fixtures/hf_t5gemma2/ (run by hand, not by the tests).

transformers 5's PyTorch T5Gemma2ForConditionalGeneration is the oracle: for each variant this builds a tiny random
model (text stacks covering every feature, a 4-wide one-layer vision tower that Sora skips), saves it with
save_pretrained into tests/fixtures/hf_t5gemma2/<variant>/ and records in expected.npz fixed inputs with HF's float32
logits and greedy `generate` tokens. tests/test_t5gemma2.py checks Sora against those files without torch.

Then it checks Sora's side in Sora's own Python (a subprocess: this venv has torch, not jax): import the fixture,
compare logits, export (params perturbed, so it is not HF's weights coming back), and load the export here with
transformers (no missing/unexpected keys) to compare its logits with Sora's. Any max relative difference above
1e-4 fails.

    /work/venv-hf5/bin/python tools/make_hf_t5gemma2_fixtures.py           # fixtures + checks (transformers 5)
    # A trained run's export against Sora's own logits (the T5Gemma tool writes a run's logits for any family):
    python tools/make_hf_t5gemma_fixtures.py --sora_workdir WORKDIR FILE.npz
    sora-export --workdir=WORKDIR --out=DIR
    /work/venv-hf5/bin/python tools/make_hf_t5gemma2_fixtures.py --check_export DIR --sora_logits FILE.npz

Seeds are fixed, so a rerun with the same versions rewrites the same fixtures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_hf_t5gemma_fixtures import VOCAB, hf_logits, max_rel_diff, train_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "hf_t5gemma2"
TOLERANCE = 1e-4
MAX_NEW_TOKENS = 8
EOI = 90  # the end-of-image id of the tied variant: inside the vocabulary, so its eoi_embedding row is used
SORA_PYTHON = os.environ.get("SORA_PYTHON", "python")  # the project's interpreter (jax), found on PATH
VISION = dict(hidden_size=4, intermediate_size=4, num_hidden_layers=1, num_attention_heads=1, image_size=14,
              patch_size=14, vision_use_head=False)

# No two of the widths, head widths and MLP widths coincide, so a transposed or mis-reshaped tensor cannot go
# unnoticed; windows are shorter than the inputs and RoPE bases small, so both layer types' rotations matter.
VARIANTS = {
    # Tied embeddings (encoder, decoder, head, and the eoi row inside the vocabulary), a deeper encoder, GQA in the
    # encoder and MQA in the decoder, both layer types in both stacks, separate RoPE per type with linear scaling on
    # the global layers, an odd window, query_pre_attn_scalar != head_dim, final soft-cap; sharded, tokenizer.model.
    "gqa_tied_eoi": dict(
        seed=0, tokenizer=True, max_shard_size="40KB", eoi=EOI,
        encoder=dict(intermediate_size=40, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                     layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
        decoder=dict(intermediate_size=36, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                     layer_types=["full_attention", "sliding_attention"]),
        common=dict(hidden_size=16, head_dim=8, query_pre_attn_scalar=6, sliding_window=3,
                    final_logit_softcapping=2.0,
                    rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}}),
        top=dict(tie_word_embeddings=True),
    ),
    # Untied (each stack and the head its own), the default 5:1 pattern in a 6-layer encoder, different heads per
    # stack (MHA), an even window, default RoPE (1e6 global, 1e4 local), no cap, eoi_token_index past the vocabulary.
    "mha_untied": dict(
        seed=1, tokenizer=False, max_shard_size=None, eoi=None,
        encoder=dict(intermediate_size=18, num_hidden_layers=6, num_attention_heads=2, num_key_value_heads=2),
        decoder=dict(intermediate_size=28, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                     layer_types=["sliding_attention", "full_attention"]),
        common=dict(hidden_size=20, head_dim=12, query_pre_attn_scalar=12, sliding_window=4),
        top=dict(tie_word_embeddings=False),
    ),
}


def make_inputs(seed: int, eoi: int | None) -> dict[str, np.ndarray]:
    """3 rows of different lengths, right-padded with 0; decoder rows start with bos (2), no real token is 0; with
    `eoi`, that id appears in two encoder rows and one decoder row."""
    rng = np.random.default_rng(seed)
    enc_lengths, dec_lengths, enc_width, dec_width = (11, 7, 3), (6, 4, 2), 12, 7
    input_ids = np.zeros((3, enc_width), np.int64)
    decoder_input_ids = np.zeros((3, dec_width), np.int64)
    for row, (n_enc, n_dec) in enumerate(zip(enc_lengths, dec_lengths, strict=True)):
        input_ids[row, : n_enc - 1] = rng.integers(4, 88, n_enc - 1)
        input_ids[row, n_enc - 1] = 1  # EOS, as a tokenized input ends
        decoder_input_ids[row, 0] = 2
        decoder_input_ids[row, 1:n_dec] = rng.integers(4, 88, n_dec - 1)
    if eoi is not None:
        input_ids[0, 4] = input_ids[1, 0] = decoder_input_ids[0, 2] = eoi
    return dict(input_ids=input_ids, attention_mask=(input_ids != 0).astype(np.int64),
                decoder_input_ids=decoder_input_ids,
                decoder_attention_mask=(decoder_input_ids != 0).astype(np.int64))


def greedy(model, inputs: dict[str, np.ndarray], use_cache: bool = False) -> np.ndarray:
    """HF greedy generation: [B, 1 + n], starting with the decoder start token, padded with 0 after EOS."""
    import torch

    with torch.no_grad():
        return model.generate(input_ids=torch.from_numpy(inputs["input_ids"]),
                              attention_mask=torch.from_numpy(inputs["attention_mask"]), decoder_start_token_id=2,
                              max_new_tokens=MAX_NEW_TOKENS, num_beams=1, do_sample=False,
                              use_cache=use_cache).numpy()


def build(name: str, spec: dict) -> dict[str, float]:
    import torch
    import transformers

    torch.manual_seed(spec["seed"])
    tied = dict(tie_word_embeddings=spec["top"]["tie_word_embeddings"])
    enc = dict(spec["encoder"], **spec["common"], **tied, vocab_size=VOCAB)
    dec = dict(spec["decoder"], **spec["common"], **tied, vocab_size=VOCAB)
    encoder = dict(text_config=enc, vision_config=VISION, mm_tokens_per_image=1, **tied)
    if spec["eoi"] is not None:
        encoder["eoi_token_index"] = spec["eoi"]
    config = transformers.T5Gemma2Config(encoder=encoder, decoder=dec, vocab_size=VOCAB, **spec["top"])
    config._attn_implementation = "eager"
    model = transformers.T5Gemma2ForConditionalGeneration(config).eval()
    with torch.no_grad():  # norms and the eoi row start at 0, which would hide a misplaced one: randomise all
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    inputs = make_inputs(spec["seed"] + 100, spec["eoi"])
    generated = greedy(model, inputs)
    # Random weights almost never pick EOS: make EOS's head row a slightly longer copy of the row of a token some
    # row picks, so that one row ends after a few tokens (padding after EOS is covered) while the others go on.
    head = model.lm_head.out_proj.weight
    original = head[1].detach().clone()
    for picked in dict.fromkeys(int(t) for t in generated[:, 3:].T.reshape(-1)):
        for factor in (1.02, 1.05, 1.2):
            with torch.no_grad():
                head[1] = factor * head[picked]
            trial = greedy(model, inputs)
            ended = (trial[:, 1:] == 1).any(axis=1)
            first_eos = [list(row[1:]).index(1) if end else None for row, end in zip(trial, ended, strict=True)]
            if ended.sum() == 1 and min(i for i in first_eos if i is not None) >= 1:
                break
        else:
            with torch.no_grad():
                head[1] = original
            continue
        break
    generated = greedy(model, inputs)
    assert (generated[:, 1:] == 1).any(), generated
    cached = greedy(model, inputs, use_cache=True)
    if not np.array_equal(cached, generated):
        print(f"{name}: transformers' cached generate differs from its uncached one: {cached} vs {generated}")
    kwargs = {"max_shard_size": spec["max_shard_size"]} if spec["max_shard_size"] else {}
    model.save_pretrained(out, safe_serialization=True, **kwargs)
    if spec["tokenizer"]:
        train_tokenizer(out)
    logits = hf_logits(model, inputs)
    np.savez_compressed(out / "expected.npz", **inputs, logits=logits.astype(np.float32), generated=generated,
                        max_new_tokens=np.int64(MAX_NEW_TOKENS))
    return sora_side(out, inputs, logits)


def sora_side(directory: Path, inputs: dict[str, np.ndarray], logits: np.ndarray) -> dict[str, float]:
    """Runs Sora on the fixture and on its export; compares both with transformers."""
    valid = inputs["decoder_attention_mask"].astype(bool)
    with tempfile.TemporaryDirectory() as tmp:
        export, result = Path(tmp) / "export", Path(tmp) / "sora.npz"
        subprocess.run([SORA_PYTHON, str(Path(__file__).resolve()), "--sora_export", str(directory), str(export),
                        str(result)], check=True, cwd=ROOT)
        with np.load(result) as data:
            sora = dict(data)
        export_diff = check_export(export, sora)
    return {"sora_vs_hf": max_rel_diff(sora["logits"], logits, valid), "export_vs_sora": export_diff}


def check_export(directory: Path, sora: dict[str, np.ndarray]) -> float:
    """Loads a Sora export with transformers (no missing/unexpected keys) -> max rel. logits diff to Sora's."""
    import transformers

    model, info = transformers.T5Gemma2ForConditionalGeneration.from_pretrained(
        directory, output_loading_info=True, attn_implementation="eager")
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise SystemExit(f"{directory}: transformers reports {problems} loading Sora's export")
    valid = sora["decoder_attention_mask"].astype(bool)
    return max_rel_diff(hf_logits(model, sora), sora["export_logits"], valid)


def run_sora_export(fixture: Path, export: Path, result: Path) -> None:
    """(Sora's Python) import `fixture`, record its logits, export perturbed params and their logits."""
    sys.path.insert(0, str(ROOT))
    import jax

    from sora_jax.interop import load_hf_t5, save_hf_t5
    from sora_jax.model import EncoderDecoder

    with np.load(fixture / "expected.npz") as data:
        inputs = {k: data[k] for k in ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")}
    cfg, params, tokenizer = load_hf_t5(fixture)
    model = EncoderDecoder(cfg)
    logits = model.apply({"params": params}, inputs["input_ids"], inputs["decoder_input_ids"])
    params = jax.tree.map(lambda x: x * 1.01, params)
    save_hf_t5(export, cfg, params, tokenizer)
    export_logits = model.apply({"params": params}, inputs["input_ids"], inputs["decoder_input_ids"])
    np.savez(result, **inputs, logits=np.asarray(logits), export_logits=np.asarray(export_logits))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sora_export", nargs=3, metavar=("FIXTURE", "EXPORT", "RESULT"), help=argparse.SUPPRESS)
    parser.add_argument("--check_export", type=Path, help="a Sora export directory to load with transformers")
    parser.add_argument("--sora_logits", type=Path, help="npz with input_ids, decoder_input_ids, "
                        "attention masks and export_logits (Sora's logits for the exported params)")
    args = parser.parse_args()
    if args.sora_export:
        run_sora_export(*map(Path, args.sora_export))
        return
    if args.check_export:
        with np.load(args.sora_logits) as data:
            sora = dict(data)
        diff = check_export(args.check_export, sora)
        print(f"{args.check_export}: max |hf - sora| / max |sora| over "
              f"{int(sora['decoder_attention_mask'].sum())} positions = {diff:.2e}")
        if diff > TOLERANCE:
            raise SystemExit(f"the export's logits differ from Sora's by more than {TOLERANCE}")
        return
    failed = False
    for name, spec in VARIANTS.items():
        diffs = build(name, spec)
        size = sum(f.stat().st_size for f in (OUT / name).iterdir())
        status = "ok" if max(diffs.values()) <= TOLERANCE else "FAIL"
        failed |= status == "FAIL"
        print(f"{name:14s} {size / 1024:7.1f} KiB  max rel |sora-hf| {diffs['sora_vs_hf']:.2e}  "
              f"max rel |hf(export)-sora| {diffs['export_vs_sora']:.2e}  {status}")
        print("   ", json.dumps({k: spec[k] for k in ("encoder", "decoder", "common", "top")}))
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"total {total / 1024:.1f} KiB in {OUT}")
    if failed:
        raise SystemExit(f"a logits difference exceeds {TOLERANCE}")


if __name__ == "__main__":
    main()
