"""Built-in benchmark suites (YAML files), shipped as package data."""
