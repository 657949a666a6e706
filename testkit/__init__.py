"""Helpers the tests and the benchmarks share: real servers to run against and configs
that point at them. Neither imports the other; both import this."""
