"""Benchmarks: `python -m bench.ingest`, `python -m bench.simulate`."""
