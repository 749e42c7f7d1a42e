"""Built-in optimization plugins, one module each (installed as `harness_plugins`)."""
