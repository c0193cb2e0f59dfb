"""Thin shells: settings, composition root, HTTP, CLI."""
