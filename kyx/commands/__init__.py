"""The `kyx` subcommands, one module each with ``main(argv) -> exit code``.

Commands sit above every other package (they may import training, checkpoints and
interop); kyx/cli.py only dispatches to them. Adding a command is a module here plus its
line in ``kyx.cli.COMMANDS``.
"""
from __future__ import annotations

import argparse

CONFIG_HELP = """\
FILE is a config file (configs/*.py): a path, or the name of a config shipped with kyx
(`pretrain.py:tiny`, or `configs/pretrain.py:tiny` when there is no such local file).
Shipped configs [presets]:
{shipped}

Overrides: --config.a.b=VALUE (or --config.a.b VALUE) sets any field of the resolved
config by its dotted key, parsed by the type of the value it replaces; an unknown key
names the closest ones. E.g. --config.train.steps=100 --config.optim.lr=3e-4
--config.mesh.rules=fsdp --config.init_from=runs/tiny. All keys: --print-config."""


def config_and_workdir(argv, prog: str, example: str, print_config: bool = False):
    """(config spec, overrides, args) of a `--config FILE[:PRESET] --workdir DIR
    [--config.a.b=v ...]` command line (``args.workdir``; with ``print_config`` also
    ``args.print_config``, and then no --workdir is needed); usage errors exit like
    argparse's. `--help` lists the shipped config files with their presets."""
    from kyx import config as config_lib

    spec, overrides, rest = config_lib.parse_cli(argv)
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=CONFIG_HELP.format(shipped=config_lib.shipped_configs_text()))
    # read by config_lib.parse_cli above; declared so that --help shows it
    parser.add_argument("--config", metavar="FILE[:PRESET]",
                        help=f"the experiment config and its preset (required), e.g. {example}")
    parser.add_argument("--workdir", required=not print_config,
                        help="run directory (config.json, checkpoints, metrics)")
    if print_config:
        parser.add_argument("--print-config", action="store_true",
                            help="print the resolved, validated config as JSON and exit "
                                 "(nothing is written)")
    args = parser.parse_args(rest)
    if spec is None:
        parser.error(f"--config FILE[:PRESET] is required (e.g. {example})")
    if print_config and not (args.print_config or args.workdir):
        parser.error("--workdir is required (or --print-config)")
    return spec, overrides, args
