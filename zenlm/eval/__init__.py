"""zen eval: the benchmarks the zen model cards report (task.py is the contract every task keeps)."""
