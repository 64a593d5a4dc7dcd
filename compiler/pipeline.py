"""One-release alias: the pipeline moved to ``spikeshield.compiler.driver.pipeline``."""

from spikeshield.compiler.driver.pipeline import CompileConfig, CompileResult, compile_model

__all__ = ["CompileConfig", "CompileResult", "compile_model"]
