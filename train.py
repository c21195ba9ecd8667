"""Train a Sora encoder-decoder: `python train.py [--config=configs/NAME.py] [--workdir=DIR] [--config.KEY=VALUE]`.

With no arguments it trains configs/default.py (Chinese review sentiment, small model, CPU) in runs/default.
"""

import sys

from sora_jax.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
