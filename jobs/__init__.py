"""Processes other than the web: each runs as ``python -m jobs.<name>`` and builds the app lazily."""
