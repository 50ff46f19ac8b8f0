"""progress.png: each phase draws nnU-Net's own panels, with the pseudo-Dice axis named for what its curve is (the
mean Dice over organs in segmentation training, the nearest-neighbour organ F1 in SACL pretraining). The figures
are inspected as they are saved (``Figure.savefig`` spied on)."""
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from nnunetv2.training.logging.nnunet_logger import LocalLogger

from nnunet_sacl.nnunet.joint import SACLTrainer_joint
from nnunet_sacl.nnunet.phases import PRETRAINING
from nnunet_sacl.nnunet.pretrainer import SACLPretrainer
from nnunet_sacl.nnunet.progress import PSEUDO_DICE_LABEL, pseudo_dice_axis_named
from nnunet_sacl.nnunet.trainer import SACLTrainer


def fill_log(logger: LocalLogger, epochs=3):
    for e in range(epochs):
        for key, value in (("mean_fg_dice", 0.05 * e), ("ema_fg_dice", 0.04 * e), ("dice_per_class_or_region", [0.1]),
                           ("train_losses", -0.1 * e), ("val_losses", -0.05 * e), ("lrs", 0.01),
                           ("epoch_start_timestamps", 10.0 * e), ("epoch_end_timestamps", 10.0 * e + 9)):
            logger.log(key, value, e)


def y_labels_as_saved(folder, label) -> list:
    """nnU-Net's LocalLogger.plot_progress_png inside ``pseudo_dice_axis_named(label)``: the y labels of the saved
    figure's axes."""
    saved, original_savefig, original_set_ylabel = [], Figure.savefig, Axes.set_ylabel

    def spy(fig, fname, *args, **kwargs):
        saved.append([ax.get_ylabel() for ax in fig.axes])
        return original_savefig(fig, fname, *args, **kwargs)

    Figure.savefig = spy
    try:
        logger = LocalLogger()
        fill_log(logger)
        with pseudo_dice_axis_named(label):
            logger.plot_progress_png(str(folder))
    finally:
        Figure.savefig = original_savefig
    assert Axes.set_ylabel is original_set_ylabel          # restored after drawing
    assert Image.open(folder / "progress.png").size == (3000, 5400)   # nnU-Net's three panels, nothing added
    return saved[0]


def uninitialised(cls, phase=None):
    """An object of the class without nnU-Net's __init__ (which needs a dataset): enough to read its labels."""
    trainer = object.__new__(cls)
    if phase is not None:
        trainer.phase = phase
    return trainer


@pytest.mark.parametrize("trainer, label", [
    (uninitialised(SACLTrainer), PSEUDO_DICE_LABEL), (uninitialised(SACLTrainer_joint), PSEUDO_DICE_LABEL),
    (uninitialised(SACLPretrainer), "nearest-neighbour organ F1 (validation)"),
    (uninitialised(SACLTrainer, PRETRAINING), "nearest-neighbour organ F1 (validation)")],
    ids=["SACLTrainer", "joint", "SACLPretrainer", "SACLTrainer phase 1"])
def test_pseudo_dice_axis_is_named_for_its_curve(tmp_path, trainer, label):
    assert trainer.pseudo_dice_label == label
    labels = y_labels_as_saved(tmp_path, trainer.pseudo_dice_label)
    assert label in labels and "pseudo dice" not in labels and "loss" in labels


@pytest.mark.parametrize("name, label", [("SACLTrainer_smoke", PSEUDO_DICE_LABEL),
                                         ("SACLTrainer_joint_smoke", PSEUDO_DICE_LABEL),
                                         ("SACLPretrainer_smoke", "nearest-neighbour organ F1 (validation)")])
def test_each_trainer_names_the_axis_when_nnunet_draws(in_process_env, tmp_path, name, label):
    """The trainer's own on_epoch_end (nnU-Net's, which draws progress.png), after three logged epochs."""
    from tests.helpers import make_trainer
    trainer = make_trainer(name)
    trainer.output_folder, trainer.log_file = str(tmp_path), str(tmp_path / "log.txt")
    trainer.disable_checkpointing = True
    fill_log(trainer.logger.local_logger)
    trainer.current_epoch = 2
    saved, original_savefig = [], Figure.savefig

    def spy(fig, fname, *args, **kwargs):
        saved.append([ax.get_ylabel() for ax in fig.axes])
        return original_savefig(fig, fname, *args, **kwargs)

    Figure.savefig = spy
    try:
        trainer.on_epoch_end()
    finally:
        Figure.savefig = original_savefig
    assert label in saved[0] and "pseudo dice" not in saved[0]
