"""`python -m kyx ...` is the `kyx` command."""
import sys

from kyx.cli import main

sys.exit(main())
