"""The short CPU run lengths (smoke, demo and pre-registered study trainers), found by ``-tr`` like the shipped
trainers in sacl_trainers.py; the classes live in the installed package (``nnunet_sacl.nnunet.short_runs``)."""
from nnunet_sacl.nnunet.short_runs import *  # noqa: F401,F403
