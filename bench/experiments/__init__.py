"""Training experiments and their reports."""
