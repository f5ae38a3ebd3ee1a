"""Benchmarks: run as modules from the repository root (``python -m bench.bench_consume``).

A package so that the entry points share their parts (floors, load generator,
table) and mypy checks them as one; see bench/README.md.
"""
