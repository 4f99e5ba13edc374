"""Benchmarks of pyramid_pyncette: ``python benchmarks/run.py --help``."""
