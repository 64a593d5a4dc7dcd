"""``python -m spikeshield.compiler.driver.cli`` (what torchrun launches)."""

import sys

from spikeshield.compiler.driver.cli import main

sys.exit(main())
