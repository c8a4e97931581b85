"""Trainable vector quantization for compact document codes (contrastive product quantization)."""
