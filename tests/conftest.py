"""Shared test helpers: the faulty-plugins folder and a runner of the `harness` CLI in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
FAULTY_PLUGINS = FIXTURES / "faulty_plugins"


def harness_cli(*args, cwd=None, env=None, timeout=600):
    """Run `python -m harness ARGS` and return the CompletedProcess (text output)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=timeout)


@pytest.fixture
def registry():
    from harness.core.plugins import load_registry

    return load_registry([FAULTY_PLUGINS])
