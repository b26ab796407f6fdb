"""argparse types shared by every subcommand (runtime and training alike).

Why its own module: the subcommands live below the CLI that assembles them, so a type they all use
cannot live in ``cli.py`` without an import running up the layers.
"""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse ``type=`` for counts (batch sizes, N objects, epochs): an integer >= 1, else exit 2."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
