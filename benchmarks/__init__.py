"""Benchmarks: latency/memory/accuracy harness, reports, paper-grid sweeps."""
