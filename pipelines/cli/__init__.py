"""The `loraops` command line: the parser in `main`, one module per command group."""

from .main import main

__all__ = ["main"]
