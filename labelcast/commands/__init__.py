"""The implementations of the `labelcast` subcommands beyond `run` and `check`."""
