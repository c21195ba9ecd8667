"""Serving a trained run: the Predictor API and export to the Hugging Face T5 layout."""
