"""``python -m nnunet_sacl.cli ...``: the same as ``nnunet-sacl ...``."""
import sys

from nnunet_sacl.cli import main

if __name__ == "__main__":   # not when a walk over the package's modules imports this one
    sys.exit(main())
