"""Builds the golden Hugging Face T5Gemma fixtures in tests/fixtures/hf_t5gemma/ (run by hand, not by the tests).

transformers' PyTorch T5GemmaForConditionalGeneration is the oracle: for each variant this builds a tiny random
model from a config (no download), saves it with save_pretrained into tests/fixtures/hf_t5gemma/<variant>/, and
records in expected.npz fixed inputs with HF's float32 logits and greedy `generate` tokens. tests/test_t5gemma.py
checks Sora against those files without torch.

Then it checks Sora's side in Sora's own Python (a subprocess: this venv has torch, not jax): import the fixture,
compare logits, export (params perturbed, so it is not HF's weights coming back), and load the export here with
transformers (no missing/unexpected keys) to compare its logits with Sora's. Any max relative difference above
1e-4 fails.

    /work/venv-hf/bin/python tools/make_hf_t5gemma_fixtures.py            # fixtures + checks
    # A trained run's export against Sora's own logits: first in Sora's Python (the run's params, its tokenizer),
    python tools/make_hf_t5gemma_fixtures.py --sora_workdir WORKDIR FILE.npz
    sora-export --workdir=WORKDIR --out=DIR
    /work/venv-hf/bin/python tools/make_hf_t5gemma_fixtures.py --check_export DIR --sora_logits FILE.npz

Seeds are fixed, so a rerun with the same versions rewrites the same fixtures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "hf_t5gemma"
TOLERANCE = 1e-4
MAX_NEW_TOKENS = 8
SORA_PYTHON = os.environ.get("SORA_PYTHON", "python")  # the project's interpreter (jax), found on PATH

# Tiny models covering every feature. No two of the widths, head widths and MLP widths coincide, so a transposed
# or mis-reshaped tensor cannot go unnoticed; the windows are shorter than the fixture sequences; the caps are small
# enough that tanh bends the logits.
VARIANTS = {
    # 9B-2B-like: an encoder wider and deeper than the decoder, GQA in the encoder and MQA in the decoder, sliding
    # + global layers, both soft-caps, query_pre_attn_scalar != head_dim, tied head; sharded safetensors and a
    # Gemma-style tokenizer.model (pad 0, eos 1, bos 2, unk 3).
    "gqa_window_softcap": dict(
        seed=0, tokenizer=True, max_shard_size="60KB",
        encoder=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2),
        decoder=dict(hidden_size=16, intermediate_size=36, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=1),
        common=dict(head_dim=8, query_pre_attn_scalar=6, sliding_window=3, attn_logit_softcapping=1.5,
                    final_logit_softcapping=2.0, rope_theta=10000.0),
        top=dict(tie_word_embeddings=True),
    ),
    # Same widths, plain multi-head attention, no soft-capping (the dot_product_attention path), custom layer
    # patterns, another rope_theta, an untied head and a deeper decoder.
    "mha_untied": dict(
        seed=1, tokenizer=False, max_shard_size=None,
        encoder=dict(hidden_size=20, intermediate_size=44, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=2, layer_types=["full_attention", "sliding_attention"]),
        decoder=dict(hidden_size=20, intermediate_size=44, num_hidden_layers=3, num_attention_heads=2,
                     num_key_value_heads=2, layer_types=["full_attention", "sliding_attention", "sliding_attention"]),
        common=dict(head_dim=12, query_pre_attn_scalar=12, sliding_window=2, attn_logit_softcapping=None,
                    final_logit_softcapping=None, rope_theta=100.0),
        top=dict(tie_word_embeddings=False),
    ),
}

TOKENIZER_TEXT = [
    "the quick brown fox jumps over the lazy dog", "a stitch in time saves nine",
    "all that glitters is not gold", "translate english to german: the house is wonderful",
    "summarize: sora imports t5gemma checkpoints from hugging face", "question: what is the capital of france",
]
VOCAB = 96


def train_tokenizer(out: Path) -> None:
    """A tiny sentencepiece model with Gemma's special ids (pad 0, eos 1, bos 2, unk 3) and VOCAB pieces."""
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "text.txt"
        text.write_text("\n".join(TOKENIZER_TEXT * 4) + "\n")
        spm.SentencePieceTrainer.train(
            input=str(text), model_prefix=str(Path(tmp) / "sp"), vocab_size=VOCAB, model_type="bpe",
            pad_id=0, eos_id=1, bos_id=2, unk_id=3, character_coverage=1.0, byte_fallback=False,
            normalization_rule_name="identity", minloglevel=2, seed_sentencepiece_size=1000,
        )
        shutil.copy(Path(tmp) / "sp.model", out / "tokenizer.model")


def make_inputs(seed: int) -> dict[str, np.ndarray]:
    """3 rows of different lengths, right-padded with 0; decoder rows start with bos (2), no real token is 0."""
    rng = np.random.default_rng(seed)
    enc_lengths, dec_lengths, enc_width, dec_width = (10, 7, 3), (6, 4, 2), 12, 7
    input_ids = np.zeros((3, enc_width), np.int64)
    decoder_input_ids = np.zeros((3, dec_width), np.int64)
    for row, (n_enc, n_dec) in enumerate(zip(enc_lengths, dec_lengths, strict=True)):
        input_ids[row, : n_enc - 1] = rng.integers(4, VOCAB, n_enc - 1)
        input_ids[row, n_enc - 1] = 1  # EOS, as a tokenized input ends
        decoder_input_ids[row, 0] = 2
        decoder_input_ids[row, 1:n_dec] = rng.integers(4, VOCAB, n_dec - 1)
    return dict(input_ids=input_ids, attention_mask=(input_ids != 0).astype(np.int64),
                decoder_input_ids=decoder_input_ids,
                decoder_attention_mask=(decoder_input_ids != 0).astype(np.int64))


def hf_logits(model, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    names = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")
    with torch.no_grad():
        return model.eval()(**{k: torch.from_numpy(inputs[k]) for k in names}).logits.float().numpy()


def greedy(model, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """HF greedy generation: [B, 1 + n], starting with the decoder start token, padded with 0 after EOS.

    Without the KV cache: in transformers 4.57, T5Gemma's cached generate builds its cross-attention cache as a
    sliding-window DynamicCache too, so sliding layers see only the last `sliding_window` encoder keys and the tokens
    depart from the forward pass (the bug fixed for T5Gemma 2 in huggingface/transformers PR #45540).
    """
    import torch

    with torch.no_grad():
        return model.generate(input_ids=torch.from_numpy(inputs["input_ids"]),
                              attention_mask=torch.from_numpy(inputs["attention_mask"]), decoder_start_token_id=2,
                              max_new_tokens=MAX_NEW_TOKENS, num_beams=1, do_sample=False, use_cache=False).numpy()


def max_rel_diff(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> float:
    """max |a - b| / max |b| over the valid decoder positions."""
    return float(np.abs(a - b)[valid].max() / np.abs(b)[valid].max())


def build(name: str, spec: dict) -> dict[str, float]:
    import torch
    import transformers

    torch.manual_seed(spec["seed"])
    # The modules carry tie_word_embeddings too (default true), and save_pretrained drops the head when the
    # decoder's is true: keep them consistent with the top level.
    tied = dict(tie_word_embeddings=spec["top"]["tie_word_embeddings"])
    enc = dict(spec["encoder"], **spec["common"], **tied, vocab_size=VOCAB)
    dec = dict(spec["decoder"], **spec["common"], **tied, vocab_size=VOCAB)
    config = transformers.T5GemmaConfig(encoder=enc, decoder=dec, vocab_size=VOCAB, **spec["top"])
    config._attn_implementation = "eager"
    model = transformers.T5GemmaForConditionalGeneration(config).eval()
    with torch.no_grad():  # norms start at 0 (a 1 + w scale of 1), which would hide a misplaced norm: randomise all
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)

    def save() -> None:
        kwargs = {"max_shard_size": spec["max_shard_size"]} if spec["max_shard_size"] else {}
        model.save_pretrained(out, safe_serialization=True, **kwargs)

    inputs = make_inputs(spec["seed"] + 100)
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
    save()
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
        export_diff = check_export(export, sora, quiet=True)
    return {"sora_vs_hf": max_rel_diff(sora["logits"], logits, valid), "export_vs_sora": export_diff}


def check_export(directory: Path, sora: dict[str, np.ndarray], quiet: bool = False) -> float:
    """Loads a Sora export with transformers (no missing/unexpected keys) -> max rel. logits diff to Sora's."""
    import transformers

    model, info = transformers.T5GemmaForConditionalGeneration.from_pretrained(
        directory, output_loading_info=True, attn_implementation="eager")
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise SystemExit(f"{directory}: transformers reports {problems} loading Sora's export")
    valid = sora["decoder_attention_mask"].astype(bool)
    diff = max_rel_diff(hf_logits(model, sora), sora["export_logits"], valid)
    if not quiet:
        print(f"{directory}: max |hf - sora| / max |sora| over {int(valid.sum())} positions = {diff:.2e} "
              f"({'ok' if diff <= TOLERANCE else 'FAIL'})")
    return diff


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


def run_sora_workdir(workdir: str, result: Path) -> None:
    """(Sora's Python) float32 logits of a trained run's newest params (a LoRA run's merged, a QLoRA run's base
    dequantized) on a few tokenized sentences, for --check_export."""
    sys.path.insert(0, str(ROOT))
    from sora_jax.model import EncoderDecoder, shift_right
    from sora_jax.workdir import load_workdir

    run = load_workdir(workdir)
    model = EncoderDecoder(dataclasses.replace(run.model_config, dtype="float32"))  # compare weights in float32
    ids = run.tokenizer.encode(TOKENIZER_TEXT[:3] + ["这个手机很好用，电池也耐用", "质量太差了"])
    width = max(map(len, ids)) + 1
    input_ids = np.zeros((len(ids), width), np.int64)
    for row, piece_ids in enumerate(ids):
        input_ids[row, : len(piece_ids) + 1] = [*piece_ids, run.model_config.eos_id]
    targets = np.random.default_rng(0).integers(3, run.tokenizer.vocab_size, (len(ids), 6)).astype(np.int32)
    decoder_input_ids = np.asarray(shift_right(targets, run.model_config.decoder_start_id)).astype(np.int64)
    logits = model.apply({"params": run.params}, input_ids, decoder_input_ids)
    np.savez(result, input_ids=input_ids, attention_mask=(input_ids != 0).astype(np.int64),
             decoder_input_ids=decoder_input_ids, decoder_attention_mask=(decoder_input_ids != 0).astype(np.int64),
             export_logits=np.asarray(logits))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sora_export", nargs=3, metavar=("FIXTURE", "EXPORT", "RESULT"), help=argparse.SUPPRESS)
    parser.add_argument("--sora_workdir", nargs=2, metavar=("WORKDIR", "RESULT"),
                        help="(Sora's Python) write a trained run's logits for --check_export")
    parser.add_argument("--check_export", type=Path, help="a Sora export directory to load with transformers")
    parser.add_argument("--sora_logits", type=Path, help="npz with input_ids, decoder_input_ids, "
                        "attention masks and export_logits (Sora's logits for the exported params)")
    args = parser.parse_args()
    if args.sora_export:
        run_sora_export(*map(Path, args.sora_export))
        return
    if args.sora_workdir:
        run_sora_workdir(args.sora_workdir[0], Path(args.sora_workdir[1]))
        return
    if args.check_export:
        with np.load(args.sora_logits) as data:
            if check_export(args.check_export, dict(data)) > TOLERANCE:
                raise SystemExit(f"the export's logits differ from Sora's by more than {TOLERANCE}")
        return
    failed = False
    for name, spec in VARIANTS.items():
        diffs = build(name, spec)
        size = sum(f.stat().st_size for f in (OUT / name).iterdir())
        status = "ok" if max(diffs.values()) <= TOLERANCE else "FAIL"
        failed |= status == "FAIL"
        print(f"{name:20s} {size / 1024:7.1f} KiB  max rel |sora-hf| {diffs['sora_vs_hf']:.2e}  "
              f"max rel |hf(export)-sora| {diffs['export_vs_sora']:.2e}  {status}")
        print("   ", json.dumps({k: spec[k] for k in ("encoder", "decoder", "common", "top")}))
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"total {total / 1024:.1f} KiB in {OUT}")
    if failed:
        raise SystemExit(f"a logits difference exceeds {TOLERANCE}")


if __name__ == "__main__":
    main()
