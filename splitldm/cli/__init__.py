"""The ``splitldm`` command line: ``generate``, ``profile`` (in `splitldm.cli.main`) and one module per
further subcommand in this package (each defines ``register(subparsers)``)."""

from splitldm.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
