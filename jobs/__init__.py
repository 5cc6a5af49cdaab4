"""Processes other than the web: each runs as ``python -m jobs.<name>``, building the app
lazily."""
