"""The ``sparse-detector`` command line: train, evaluate, analyze, compare, predict, data, quickstart, visualize,
study.

Layout: a module per command (``evaluation`` holds evaluate, analyze and compare; ``data`` its tools) with, per
subcommand, an ``add_<command>_command(commands)`` function that registers its parser (arguments, an example, its
handler) and a ``_<command>(args)`` handler that runs it. What several commands share is in ``parsing`` (the parser,
shared options, argparse types), ``outputs``, ``model_source``, ``presets`` and ``summaries``; ``entry`` builds the
parser of every command and runs :func:`main`. Handlers import torch and the rest of the package when they run, so
``sparse-detector --help`` and every ``<command> --help`` stay instant. A new subcommand is one more pair of
functions and one line in ``entry.COMMANDS`` (or ``data.DATA_COMMANDS`` under ``data``).
"""

from .entry import main

__all__ = ["main"]
