"""Thin adapters of the batching layer to training frameworks, each an optional extra (lightning, huggingface, keras)."""
