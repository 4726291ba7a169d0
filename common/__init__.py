"""The lowest layer: typed config, run folders, distributed set-up and samplers, atomic files, audio
listing and manifests, RNG state, shipped resources. Imports nothing of the project."""
