"""The pretraining phase's curves: kept per epoch, saved in checkpoints, drawn on top of nnU-Net's progress.png."""
from os.path import isfile, join

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
from nnunetv2.training.logging.nnunet_logger import LocalLogger  # noqa: E402

PRETRAIN_KEYS = ("loss", "lr", "organs_per_batch", "batches_without_positive", "epoch_seconds")


def new_pretrain_log() -> dict:
    return {k: [] for k in PRETRAIN_KEYS}


def plot_pretraining(log: dict, filename: str, width_inches: float = 30) -> None:
    """One panel: contrastive loss (left axis) and learning rate (right axis) per pretraining epoch."""
    with plt.rc_context({"font.size": 25}):  # the size nnU-Net's own panels use (seaborn font_scale 2.5)
        _plot_pretraining(log, filename, width_inches)


def _plot_pretraining(log: dict, filename: str, width_inches: float) -> None:
    fig, ax = plt.subplots(1, 1, figsize=(width_inches, 12))
    epochs = list(range(len(log["loss"])))
    ax.plot(epochs, log["loss"], color="b", linewidth=4, label="SACL contrastive loss")
    ax.set_xlabel("pretraining epoch")
    ax.set_ylabel("contrastive loss")
    ax.legend(loc=(0, 1))
    ax2 = ax.twinx()
    ax2.plot(epochs, log["lr"], color="g", ls="--", linewidth=3, label="learning rate")
    ax2.set_ylabel("learning rate")
    ax2.legend(loc=(0.3, 1))
    fig.tight_layout()
    fig.savefig(filename)
    plt.close(fig)


def stack_png_on_top(top_png: str, bottom_png: str, out_png: str) -> None:
    """Writes top above bottom (both as they are) into out_png."""
    from PIL import Image
    top, bottom = Image.open(top_png), Image.open(bottom_png)
    canvas = Image.new("RGB", (max(top.width, bottom.width), top.height + bottom.height), "white")
    canvas.paste(top, (0, 0))
    canvas.paste(bottom, (0, top.height))
    canvas.save(out_png)


class SACLLocalLogger(LocalLogger):
    """nnU-Net's local logger whose progress.png also shows the pretraining phase above nnU-Net's own panels.

    The pretraining curves live in their own dict (``pretrain_log``), not in ``my_fantastic_logging``: nnU-Net
    requires every list there to have exactly one entry per segmentation epoch.
    """

    def __init__(self, pretrain_log: dict, verbose: bool = False):
        super().__init__(verbose)
        self.pretrain_log = pretrain_log

    def plot_progress_png(self, output_folder):
        super().plot_progress_png(output_folder)
        if self.pretrain_log["loss"]:
            pre = join(output_folder, "progress_pretraining.png")
            if not isfile(pre):
                plot_pretraining(self.pretrain_log, pre)
            stack_png_on_top(pre, join(output_folder, "progress.png"), join(output_folder, "progress.png"))
