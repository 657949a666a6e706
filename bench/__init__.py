"""Benchmarks: `bench/run` (`loadtest.py`) and `jsonguard_bench.py`."""
