"""Many inputs at once: planning, sharding over processes (accelerate / torchrun), the manifest and resume
(:mod:`.batch`). The command line's side is :mod:`bdia.cli.datasets`."""
