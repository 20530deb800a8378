"""Tensor in, tensor out: the kernel API over custom_ops (vertical-slash, block-sparse, A-shape, dense),
the estimators of each pattern's indices, the FlexAttention BlockMasks, input checks, float64
references and exact masks. No transformers import."""
