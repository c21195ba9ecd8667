"""Generating text: `search` holds the algorithms (greedy, sampling, beam search over the model's KV cache);
`generator` compiles them once per DecodeOptions for a model on a mesh and scores sequences."""
