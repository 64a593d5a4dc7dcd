"""The ``spikeshield`` command line: one module per command group. It parses arguments and calls
the library; nothing else."""

import sys

# Imported for their commands, in the order `spikeshield --help` lists them.
from spikeshield.compiler.driver.cli import train  # noqa: F401  isort: skip
from spikeshield.compiler.driver.cli import compile  # noqa: F401  isort: skip
from spikeshield.compiler.driver.cli import evaluate  # noqa: F401  isort: skip
from spikeshield.compiler.driver.cli import exports  # noqa: F401  isort: skip
from spikeshield.compiler.driver.cli import tools  # noqa: F401  isort: skip
from spikeshield.compiler.driver.cli.common import app


def main() -> None:
    """Console-script entry point."""
    app(prog_name="spikeshield")


__all__ = ["app", "main"]

if __name__ == "__main__":
    sys.exit(main())
