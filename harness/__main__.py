"""`python -m harness` is the `harness` command."""

import sys

from harness.core.cli import main

sys.exit(main())
