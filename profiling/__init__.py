"""Benchmarks for skyd and skyctl (see BENCHMARKS.md): `python -m profiling.bench_core`."""
