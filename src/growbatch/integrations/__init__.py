"""Thin adapters of the batching layer to training frameworks, each an optional extra.

Import the one you use: ``growbatch.integrations.lightning`` (``pip install growbatch[lightning]``),
``growbatch.integrations.keras`` (``[keras]``), ``growbatch.integrations.huggingface`` (``[huggingface]``).
"""
