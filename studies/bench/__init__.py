"""Benchmarks: timed runs of the ops on a CPU or GPU, writing result files under reports/ (see README.md)."""
