"""The names compression offers, in one place and free of qwix so that config checks can read them."""

# Weight quantization schemes (PTQ, QAT, a QLoRA base) and their integer storage types (providers.py).
SCHEMES = ("int8", "int4")
# Projections of the attention and MLP blocks: what qwix quantizes and what LoRA can adapt (not the LM head).
ATTENTION_LAYERS = ("q", "k", "v", "o")
MLP_LAYERS = ("wi", "wi_0", "wi_1", "wo")
LORA_TARGETS = (*ATTENTION_LAYERS, *MLP_LAYERS)
