"""Bridges to other tools; each module imports its tool, so import them only when it is installed."""
