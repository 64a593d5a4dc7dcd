"""The package list is derived from the tree, so a wheel can never miss a package (a hand-kept
list once left out ``spikeshield.compiler.ir.ops``). Everything else lives in pyproject.toml."""

from setuptools import find_packages, setup

TOP_LEVEL = ("compiler", "frontends", "backends", "runtime")

# The ``spikeshield`` package itself (``import spikeshield as ss``): its ``__init__`` lives in the
# driver floor, since the repository's top level is fixed; it only re-exports the API's verbs.
PACKAGE_INIT = "compiler/driver/toplevel"

setup(
    packages=["spikeshield"] + [f"spikeshield.{name}" for name in find_packages(
        include=[pattern for top in TOP_LEVEL for pattern in (top, f"{top}.*")])],
    package_dir={"spikeshield": PACKAGE_INIT} | {f"spikeshield.{top}": top for top in TOP_LEVEL},
    # The weight-sparse convolution kernel, compiled on first use (runtime/sparse_conv.py).
    package_data={"spikeshield.runtime": ["csrc/*.cpp"]},
)
