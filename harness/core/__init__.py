"""The runner and everything it needs that no workload owns: suites, processes, timing, statistics, load, memory, energy, results."""
