"""The package list is derived from the tree, so a wheel can never miss a package (a hand-kept
list once left out ``spikeshield.compiler.ir.ops``). Everything else lives in pyproject.toml."""

from setuptools import find_packages, setup

TOP_LEVEL = ("compiler", "frontends", "backends", "runtime")

setup(
    packages=[f"spikeshield.{name}" for name in find_packages(
        include=[pattern for top in TOP_LEVEL for pattern in (top, f"{top}.*")])],
    package_dir={f"spikeshield.{top}": top for top in TOP_LEVEL},
    # The weight-sparse convolution kernel, compiled on first use (runtime/sparse_conv.py).
    package_data={"spikeshield.runtime": ["csrc/*.cpp"]},
)
