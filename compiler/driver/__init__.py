"""What a user calls: the CLI, the compile pipeline, reports, exports, the demo, manifests.

May import every floor; nothing imports it (import-linter checks both).
"""
