"""Real pretrained LLMs from local files (SmolLM2, Gemma 3, any GGUF) and retrieval tasks hidden in a
real novel with the model's own tokenizer."""
