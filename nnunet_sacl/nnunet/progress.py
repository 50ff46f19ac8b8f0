"""Naming nnU-Net's progress.png for what SACL trainers plot on it."""
from contextlib import contextmanager

NNUNET_PSEUDO_DICE_LABEL = "pseudo dice"
PSEUDO_DICE_LABEL = "pseudo dice (mean over organs)"


@contextmanager
def pseudo_dice_axis_named(label: str = PSEUDO_DICE_LABEL):
    """While nnU-Net draws its panels, its right axis label 'pseudo dice' becomes ``label``: by default 'pseudo dice
    (mean over organs)', since the curve is the mean over the foreground classes, which the bare name does not say;
    in SACL pretraining the curve is a nearest-neighbour organ F1 score. nnU-Net's plot has no option for its labels,
    so ``Axes.set_ylabel`` is wrapped for the duration of the call (copying nnU-Net's plot function for one label
    would fork it)."""
    from matplotlib.axes import Axes
    original = Axes.set_ylabel

    def set_ylabel(self, text, *args, **kwargs):
        return original(self, label if text == NNUNET_PSEUDO_DICE_LABEL else text, *args, **kwargs)

    Axes.set_ylabel = set_ylabel
    try:
        yield
    finally:
        Axes.set_ylabel = original
