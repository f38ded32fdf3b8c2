"""Corpus, readers, tokenizer, example construction, blending and packing."""
