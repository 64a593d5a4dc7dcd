"""Compiler passes, one per file (IR -> IR); ``registry`` holds them, ``manager`` runs them."""
