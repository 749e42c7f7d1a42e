"""The built-in workloads, one package each, written against harness.api."""
