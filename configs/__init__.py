"""The experiment configs shipped with kyx, installed as the package ``kyx.configs``.

Each file defines ``get_config(preset)``; load one by path with ``kyx.config.load`` or the
CLI (``--config pretrain.py:tiny``): a bare name, or ``configs/<name>``, resolves to the
file here when the working directory has no such file. The files are run by path, not
imported as modules of this package.
"""
