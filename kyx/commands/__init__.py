"""The `kyx` subcommands, one module each with ``main(argv) -> exit code``.

Commands sit above every other package (they may import training, checkpoints and
interop); kyx/cli.py only dispatches to them. Adding a command is a module here plus its
line in ``kyx.cli.COMMANDS``.
"""
from __future__ import annotations

import argparse


def config_and_workdir(argv, prog: str, example: str):
    """(config spec, overrides, workdir) of a `--config FILE[:PRESET] --workdir DIR
    [--config.a.b=v ...]` command line; usage errors exit like argparse's."""
    from kyx import config as config_lib

    spec, overrides, rest = config_lib.parse_cli(argv)
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args(rest)
    if spec is None:
        parser.error(f"--config PATH[:PRESET] is required (e.g. {example})")
    return spec, overrides, args.workdir
