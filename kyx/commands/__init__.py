"""The `kyx` subcommands, one module each with ``main(argv) -> exit code``.

Commands sit above every other package (they may import training, checkpoints and
interop); kyx/cli.py only dispatches to them. Adding a command is a module here plus its
line in ``kyx.cli.COMMANDS``.
"""
