"""progress.png: each phase draws nnU-Net's own panels through nnU-Net's own logger, nothing patched (matplotlib's
and nnU-Net's methods are the ones they ship); the short runs' logger (a subclass of nnU-Net's) draws after the last
epoch only. The figures are inspected as they are saved (``Figure.savefig`` spied on, in the test only)."""
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from nnunetv2.training.logging.nnunet_logger import LocalLogger, MetaLogger

from nnunet_sacl.nnunet.short_runs import ProgressAtTheEnd


def fill_log(logger: LocalLogger, epochs=3):
    for e in range(epochs):
        for key, value in (("mean_fg_dice", 0.05 * e), ("ema_fg_dice", 0.04 * e), ("dice_per_class_or_region", [0.1]),
                           ("train_losses", -0.1 * e), ("val_losses", -0.05 * e), ("lrs", 0.01),
                           ("epoch_start_timestamps", 10.0 * e), ("epoch_end_timestamps", 10.0 * e + 9)):
            logger.log(key, value, e)


def drawn_by_on_epoch_end(trainer, tmp_path) -> list:
    """The y labels of every figure the trainer's own on_epoch_end (nnU-Net's, which draws progress.png) saved."""
    tmp_path.mkdir(exist_ok=True)
    trainer.output_folder, trainer.log_file = str(tmp_path), str(tmp_path / "log.txt")
    trainer.disable_checkpointing = True
    fill_log(trainer.logger.local_logger, trainer.current_epoch + 1)
    saved, original_savefig = [], Figure.savefig

    def spy(fig, fname, *args, **kwargs):
        saved.append([ax.get_ylabel() for ax in fig.axes])
        return original_savefig(fig, fname, *args, **kwargs)

    Figure.savefig = spy
    try:
        trainer.on_epoch_end()
    finally:
        Figure.savefig = original_savefig
    return saved


@pytest.mark.parametrize("name", ["SACLTrainer", "SACLTrainer_joint", "SACLPretrainer", "SACLPretrainer_smoke"])
def test_each_trainer_draws_nnunets_own_progress_png(in_process_env, tmp_path, name):
    from tests.helpers import make_trainer
    set_ylabel, plot = Axes.set_ylabel, LocalLogger.plot_progress_png
    trainer = make_trainer(name)
    trainer.current_epoch = 2
    trainer.num_epochs = 3
    saved = drawn_by_on_epoch_end(trainer, tmp_path)
    assert saved == [["loss", "time [s]", "learning rate", "pseudo dice"]]     # nnU-Net's panels, the twin axis last
    assert Image.open(tmp_path / "progress.png").size == (3000, 5400)
    assert isinstance(trainer.logger, MetaLogger) and "plot_progress_png" not in vars(trainer.logger)
    assert Axes.set_ylabel is set_ylabel and LocalLogger.plot_progress_png is plot     # nothing replaced


def test_short_runs_draw_after_their_last_epoch_only(in_process_env, tmp_path):
    from tests.helpers import make_trainer
    for epoch, figures in ((1, 0), (2, 1)):
        trainer = make_trainer("SACLTrainer_smoke")
        assert type(trainer.logger) is ProgressAtTheEnd
        trainer.num_epochs, trainer.current_epoch = 3, epoch
        assert len(drawn_by_on_epoch_end(trainer, tmp_path / str(epoch))) == figures
