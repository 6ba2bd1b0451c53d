"""The benchmark suite's tables, one module each; `benchmarks/run_benchmarks.py` runs them and writes RESULTS.md."""
