"""Training recipes for dlmarch models: one loop, small objectives, entrypoints."""
