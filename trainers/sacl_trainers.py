"""nnU-Net finds SACL's trainers here: ``export nnUNet_extTrainer=<this folder>``, then ``-tr SACLTrainer``.

Kept thin on purpose: nnU-Net imports this folder's modules by file name (relative imports would break), so
every class lives in the installed ``nnunet_sacl`` package.
"""
from nnunet_sacl.nnunet.variants import *  # noqa: F401,F403
