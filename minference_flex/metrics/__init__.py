"""Measurement, apart from compute: tiles the patterns computed (`count_tiles`, fed by the patterns'
events) and attention recall of candidate patterns (for the search)."""
