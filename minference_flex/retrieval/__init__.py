"""The small synthetic retrieval model shipped with the library: its tokenizer and tasks, the model,
training and checkpoints."""
