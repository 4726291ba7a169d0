"""The lowest layer: typed config, distributed set-up and samplers, atomic file writes. Imports nothing of the project."""
