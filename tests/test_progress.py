"""progress.png: the pretraining panel is drawn in nnU-Net's panel style and put on top of nnU-Net's own panels, and
nnU-Net's pseudo-Dice axis says that it is the mean over organs (as SACLTrainer.on_epoch_end does it: nnU-Net's
LocalLogger draws, then the panel goes on top). The figures are inspected as they are saved (``Figure.savefig`` spied
on)."""
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from nnunetv2.training.logging.nnunet_logger import LocalLogger

from nnunet_sacl.nnunet.progress import (PSEUDO_DICE_LABEL, add_pretraining_panel, new_pretrain_log, plot_pretraining,
                                         pseudo_dice_axis_named_as_mean)


def fill_logs(logger: LocalLogger, pretrain_log: dict, pretrain_epochs=4, epochs=3):
    for e in range(pretrain_epochs):
        for key, value in zip(("loss", "lr", "organs_per_batch", "batches_without_positive", "epoch_seconds"),
                              (3.0 - 0.3 * e, 0.01 * (1 - e / pretrain_epochs), 5.0, 0, 1.0)):
            pretrain_log[key].append(value)
    for e in range(epochs):
        for key, value in (("mean_fg_dice", 0.05 * e), ("ema_fg_dice", 0.04 * e), ("dice_per_class_or_region", [0.1]),
                           ("train_losses", -0.1 * e), ("val_losses", -0.05 * e), ("lrs", 0.01),
                           ("epoch_start_timestamps", 10.0 * e), ("epoch_end_timestamps", 10.0 * e + 9)):
            logger.log(key, value, e)


def spy_on_savefig(saved: list):
    """Records, per saved figure: file, size in inches and, per axes, facecolor, y label, label font size, grid,
    line widths, x tick values, and its legend's texts and box on the drawn figure (in pixels). Returns the
    original ``Figure.savefig`` (to restore)."""
    original = Figure.savefig

    def spy(fig, fname, *args, **kwargs):
        result = original(fig, fname, *args, **kwargs)       # drawn: legend boxes have their final extents
        renderer = fig.canvas.get_renderer()
        saved.append({"file": str(fname), "size": tuple(fig.get_size_inches()),
                      "axes": [{"facecolor": ax.get_facecolor(), "ylabel": ax.get_ylabel(),
                                "fontsize": ax.yaxis.label.get_fontsize(),
                                "grid": ax.yaxis._major_tick_kw.get("gridOn"),
                                "linewidths": [line.get_linewidth() for line in ax.get_lines()],
                                "xticks": [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]],
                                "legend": None if ax.get_legend() is None else
                                ([t.get_text() for t in ax.get_legend().get_texts()],
                                 ax.get_legend().get_window_extent(renderer))}
                               for ax in fig.axes]})
        return result

    Figure.savefig = spy
    return original


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """nnU-Net's LocalLogger.plot_progress_png with the pseudo-Dice axis named as the mean, then the pretraining
    panel on top (SACLTrainer.on_epoch_end's order): the folder and saved figures."""
    folder = tmp_path_factory.mktemp("progress")
    saved = []
    original_set_ylabel = Axes.set_ylabel
    original = spy_on_savefig(saved)
    try:
        logger, pretrain_log = LocalLogger(), new_pretrain_log()
        fill_logs(logger, pretrain_log)
        with pseudo_dice_axis_named_as_mean():
            logger.plot_progress_png(str(folder))
        add_pretraining_panel(pretrain_log, str(folder))
    finally:
        Figure.savefig = original
    assert Axes.set_ylabel is original_set_ylabel          # restored after drawing
    nnunet_fig = next(f for f in saved if f["file"].endswith("progress.png"))
    ours = next(f for f in saved if f["file"].endswith("progress_pretraining.png"))
    return folder, nnunet_fig, ours


def test_pretraining_panel_has_nnunet_panel_style(drawn):
    folder, nnunet_fig, ours = drawn
    theirs = nnunet_fig["axes"][0]                          # nnU-Net's loss / pseudo-Dice panel
    mine = ours["axes"][0]
    assert mine["facecolor"] == theirs["facecolor"] and mine["fontsize"] == theirs["fontsize"]
    assert mine["grid"] == theirs["grid"]
    assert ours["size"][0] == nnunet_fig["size"][0] and ours["size"][1] == pytest.approx(nnunet_fig["size"][1] / 3)
    assert max(mine["linewidths"]) == max(theirs["linewidths"])
    stacked = Image.open(folder / "progress.png")
    assert stacked.size == (3000, 1800 + 5400)             # our panel above nnU-Net's three, same width


def test_pseudo_dice_axis_says_mean_over_organs(drawn):
    labels = [a["ylabel"] for a in drawn[1]["axes"]]
    assert PSEUDO_DICE_LABEL in labels and "pseudo dice" not in labels


def test_pretraining_panel_alone_in_a_fresh_process_style(tmp_path, drawn):
    """During pretraining nnU-Net has drawn nothing yet: the panel must set nnU-Net's style itself."""
    import matplotlib
    matplotlib.rcdefaults()
    saved = []
    original = spy_on_savefig(saved)
    try:
        log = new_pretrain_log()
        log["loss"], log["lr"] = [2.0, 1.5, 1.2], [0.01, 0.007, 0.004]
        plot_pretraining(log, str(tmp_path / "p.png"))
    finally:
        Figure.savefig = original
    assert Image.open(tmp_path / "p.png").size == (3000, 1800)
    assert [a["ylabel"] for a in saved[0]["axes"]] == ["contrastive loss", "learning rate"]
    theirs = drawn[1]["axes"][0]
    assert saved[0]["axes"][0]["facecolor"] == theirs["facecolor"]
    assert saved[0]["axes"][0]["fontsize"] == theirs["fontsize"]


def test_pretraining_panel_legends_do_not_overlap_and_epochs_are_whole(tmp_path):
    """Both curves are named in legends that do not overlap one another, and the epoch axis ticks whole epochs
    (4 pretraining epochs: no 0.5, 1.5)."""
    saved = []
    original = spy_on_savefig(saved)
    try:
        log = new_pretrain_log()
        log["loss"], log["lr"] = [2.0, 1.5, 1.2, 1.0], [0.01, 0.0075, 0.005, 0.0025]
        plot_pretraining(log, str(tmp_path / "p.png"))
    finally:
        Figure.savefig = original
    legends = [a["legend"] for a in saved[0]["axes"] if a["legend"] is not None]
    assert sorted(t for texts, _ in legends for t in texts) == ["SACL contrastive loss", "learning rate"]
    boxes = [box for _, box in legends]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    ticks = saved[0]["axes"][0]["xticks"]
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks
