"""Helpers the tests and the benchmarks share: real servers to run against and configs
that point at them. The benchmarks import this package and never a test module; it lives
under tests/ so the repository's top level stays service/, config/, tests/, bench/,
scripts/ and deploy/."""
