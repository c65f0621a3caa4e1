"""Measuring a model: strided perplexity and lm-eval."""
