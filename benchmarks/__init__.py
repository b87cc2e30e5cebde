"""Benchmarks for flask-towersess; run ``python -m benchmarks --help``."""
