"""Offline choice of each head's pattern: recall-based search on a calibration prompt, then an optional
refinement against the model's own next-token predictions (KL)."""
