"""The `python -m minference_flex` commands (search, eval, demo) and the demos."""
