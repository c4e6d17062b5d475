"""Subcommands of the `splitldm` CLI: each module here has `register(subparsers)`."""
