"""Speed and memory benchmarks against baselines run in the same process."""
