"""Command-line scripts."""
