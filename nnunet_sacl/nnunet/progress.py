"""The pretraining phase's curves: kept per epoch by the trainer, saved in its checkpoints, drawn on top of
nU-Net's progress.png."""
from contextlib import contextmanager
from os.path import isfile, join

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

PRETRAIN_KEYS = ("loss", "lr", "organs_per_batch", "batches_without_positive", "epoch_seconds")
NNUNET_PSEUDO_DICE_LABEL = "pseudo dice"
PSEUDO_DICE_LABEL = "pseudo dice (mean over organs)"


def new_pretrain_log() -> dict:
    return {k: [] for k in PRETRAIN_KEYS}


def plot_pretraining(log: dict, filename: str, width_inches: float = 30) -> None:
    """One panel in the style of nnU-Net's progress.png panels (seaborn darkgrid, font scale 2.5, 30 x 18 inches,
    thick lines, legend above): contrastive loss (left axis) and learning rate (right axis) per pretraining epoch,
    whole epochs on the x axis. Both curves share one legend: two legends side by side, as nnU-Net places its own,
    overlap at this font size with labels this long."""
    from matplotlib.ticker import MaxNLocator
    sns.set(font_scale=2.5)  # what nnU-Net's LocalLogger.plot_progress_png sets before drawing its panels
    fig, ax = plt.subplots(1, 1, figsize=(width_inches, 18))
    epochs = list(range(len(log["loss"])))
    loss = ax.plot(epochs, log["loss"], color="b", ls="-", linewidth=4, label="SACL contrastive loss")
    ax.set_xlabel("pretraining epoch")
    ax.set_ylabel("contrastive loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2 = ax.twinx()
    lr = ax2.plot(epochs, log["lr"], color="g", ls="dotted", linewidth=3, label="learning rate")
    ax2.set_ylabel("learning rate")
    ax.legend(handles=loss + lr, loc=(0, 1), ncol=2)
    plt.tight_layout()
    fig.savefig(filename)
    plt.close(fig)


@contextmanager
def pseudo_dice_axis_named_as_mean():
    """While nnU-Net draws its panels, its right axis label 'pseudo dice' becomes 'pseudo dice (mean over organs)':
    the curve is the mean over the foreground classes, which the bare name does not say. nnU-Net's plot has no
    option for its labels, so ``Axes.set_ylabel`` is wrapped for the duration of the call (copying nnU-Net's plot
    function for one label would fork it)."""
    from matplotlib.axes import Axes
    original = Axes.set_ylabel

    def set_ylabel(self, label, *args, **kwargs):
        return original(self, PSEUDO_DICE_LABEL if label == NNUNET_PSEUDO_DICE_LABEL else label, *args, **kwargs)

    Axes.set_ylabel = set_ylabel
    try:
        yield
    finally:
        Axes.set_ylabel = original


def stack_png_on_top(top_png: str, bottom_png: str, out_png: str) -> None:
    """Writes top above bottom (both as they are) into out_png."""
    from PIL import Image
    top, bottom = Image.open(top_png), Image.open(bottom_png)
    canvas = Image.new("RGB", (max(top.width, bottom.width), top.height + bottom.height), "white")
    canvas.paste(top, (0, 0))
    canvas.paste(bottom, (0, top.height))
    canvas.save(out_png)


def add_pretraining_panel(pretrain_log: dict, output_folder: str) -> None:
    """Puts the pretraining panel (drawn from ``pretrain_log`` once, when missing) on top of the progress.png that
    nnU-Net has just drawn. The pretraining curves stay the trainer's own: nnU-Net's logger requires every list it
    keeps to have exactly one entry per segmentation epoch, and it needs nothing of ours."""
    pre, progress = join(output_folder, "progress_pretraining.png"), join(output_folder, "progress.png")
    if not isfile(pre):
        plot_pretraining(pretrain_log, pre)
    stack_png_on_top(pre, progress, progress)
