"""``nnunet-sacl demo``: baseline vs SACL on a small dataset, each step nnU-Net's own command
(``nnunet_sacl.demo``)."""
import os

from nnunet_sacl.cli import Command, default_device, refusing
from nnunet_sacl.defaults import SDIST_NAME
from nnunet_sacl.demo import DEFAULT_CONFIGURATION, DEFAULT_TRAINERS

EXAMPLE = ("# real CT, nnUNetTrainer_demo vs SACLTrainer_demo, 2d:\n"
           "nnunet-sacl demo\n"
           "nnunet-sacl demo --synthetic      # generated shapes, no download")


def add_arguments(p) -> None:
    p.add_argument("--workdir", default="sacl_demo", help="holds nnUNet_raw/preprocessed/results of the demo")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("-d", type=int, default=990, help="dataset id (default 990)")
    p.add_argument("-tr", nargs="+", default=list(DEFAULT_TRAINERS),
                   help="trainers to compare, the first is the baseline (default: %(default)s)")
    p.add_argument("-c", default=DEFAULT_CONFIGURATION, help="nnU-Net configuration (default: %(default)s)")
    p.add_argument("-f", type=int, default=0, help="fold (default 0)")
    p.add_argument("--synthetic", action="store_true", help="use the generated shapes instead of the real CT")
    p.add_argument("--sdist", help=f"a local {SDIST_NAME} (offline; see docs/demo-data.md)")


def run(args) -> int:
    from nnunet_sacl.analysis.study import StudyError
    from nnunet_sacl.dataset_conversion.demo_data import DemoDataUnavailable
    from nnunet_sacl.demo import run_demo
    from nnunet_sacl.environment import with_ext_trainer
    from nnunet_sacl.train import check_trainer
    # the real CT's source could not be found, downloaded or verified; a bad trainer, fold or configuration; a
    # training or prediction that failed (nnU-Net's own output above says why)
    with refusing(DemoDataUnavailable, StudyError, RuntimeError):
        saved = dict(os.environ)
        os.environ.update(with_ext_trainer(os.environ))     # the trainers as the demo's nnU-Net will see them
        try:
            for trainer in args.tr:          # a typo: refused before anything is written, with the closest name
                check_trainer(trainer)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        run_demo(args.workdir, default_device(args.device), args.d, args.tr, args.c, args.f,
                 synthetic=args.synthetic, sdist=args.sdist)
    return 0


COMMANDS = [Command("demo", "baseline vs SACL on a small real CT dataset: plan, train both, predict, compare", EXAMPLE,
                    add_arguments, run)]
