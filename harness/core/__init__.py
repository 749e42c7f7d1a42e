"""The runner and everything it needs that no workload owns: suites, processes, timing, statistics, load, memory,
energy, results. Nothing here imports a workload or an optimization: they register through entry points."""
