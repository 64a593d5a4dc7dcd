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


def __getattr__(name: str):
    """``click_command``: the typer app as the click command it builds, for the docs site's CLI
    reference (mkdocs-click renders it), built on demand so that the CLI's start pays nothing."""
    if name == "click_command":
        import typer

        return typer.main.get_command(app)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["app", "main"]

if __name__ == "__main__":
    sys.exit(main())
