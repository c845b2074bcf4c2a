"""Benchmarks and the reference-style baselines they compare against (not the engine)."""
