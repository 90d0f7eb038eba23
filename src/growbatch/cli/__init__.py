"""The ``growbatch`` command line: one module per subcommand; argparse lives only here."""

from .common import UsageError
from .main import build_parser, main

__all__ = ["UsageError", "build_parser", "main"]
