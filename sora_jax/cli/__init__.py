"""Command lines: sora-train (train.py), sora-eval, sora-predict, sora-export."""
