"""Hugging Face integration: convert a model, the attention layer, the generation cache, load and save."""
