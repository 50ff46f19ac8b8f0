"""``python -m nnunet_sacl.train ARGS`` (what torchrun starts with ``-m``): the same as ``nnunet-sacl train ARGS``.
The entry point only: the options are ``nnunet_sacl.cli.train``'s, the launcher is ``nnunet_sacl.train``."""
import sys

from nnunet_sacl.cli.train import standalone

if __name__ == "__main__":   # not when a walk over the package's modules imports this one
    sys.exit(standalone())
