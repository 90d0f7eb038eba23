"""Thin adapters that let frameworks train on a growbatch Schedule, each an optional extra.

Import the one you use: ``growbatch.integrations.keras`` (``pip install growbatch[keras]``),
``growbatch.integrations.huggingface`` (``[huggingface]``), ...
"""
