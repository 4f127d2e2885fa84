"""Studies that produce the committed results in benchmarks/results; each registers itself (registry.py)
and runs through ``medprune study NAME``."""
