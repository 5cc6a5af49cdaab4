"""Execution events: published after they are committed, per user, over the store's pub/sub."""
