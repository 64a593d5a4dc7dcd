"""The IR floor: graph, ops, serialization, errors, bounds and atomic writes.

Imports nothing else of spikeshield (import-linter checks it).
"""
