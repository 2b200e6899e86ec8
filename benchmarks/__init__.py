"""Benchmarks: every speed target measured as a ratio side by side in one run."""
