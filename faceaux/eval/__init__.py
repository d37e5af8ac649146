"""Verification metrics and embedding extraction."""
