"""Launch a training run: same arguments as `kyx train`.

    python experiments/train.py --config configs/pretrain.py:tiny --workdir runs/tiny
"""
import sys

from kyx.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
