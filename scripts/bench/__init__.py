"""Benchmark suites for scripts/benchmark.py."""
