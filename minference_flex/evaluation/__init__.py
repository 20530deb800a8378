"""Accuracy tables over task sets (retrieval model or real LLMs), perplexity and KL against dense."""
