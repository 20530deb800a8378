"""Hugging Face glue: `compile`/`restore` a causal LM so its pre-fill runs the patterns, the attention
dispatch per call, the host-offloaded KV cache, device layouts, and the dense probe the search uses."""
