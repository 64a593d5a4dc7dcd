"""One-release alias: the CLI moved to ``spikeshield.compiler.driver.cli``
(``python -m spikeshield.compiler.cli`` keeps working)."""

import sys

from spikeshield.compiler.driver.cli import app, main

__all__ = ["app", "main"]

if __name__ == "__main__":
    sys.exit(main())
