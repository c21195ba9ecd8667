"""Ahead-of-time compilation for Cloud TPU slices that are not attached: `train.py --dry_run --topology=NAME`."""
