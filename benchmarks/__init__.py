"""Microbenchmarks and throughput runs: ``python -m benchmarks.<name>``; results go to benchmarks/results/."""
