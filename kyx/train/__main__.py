"""`python -m kyx.train --config ... --workdir ...` is `kyx train`."""
import sys

from kyx.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
