"""``nnunet-sacl study``: trainers x folds through nnU-Net's own commands, then the paired comparison with the first
trainer and each run's cost (``nnunet_sacl.analysis.study``)."""
import shlex
import sys
from pathlib import Path

from nnunet_sacl.analysis.study import DEFAULT_FOLDS
from nnunet_sacl.cli import Command, CommandError, default_device, refusing
from nnunet_sacl.defaults import DEFAULT_TOLERANCE_MM, NSD_METHODS

EXAMPLE = ("nnunet-sacl study -d 17 -c 3d_fullres -f 0 1 2 3 4 -o study_btcv \\\n"
           "    -tr nnUNetTrainer SACLTrainer SACLTrainer_joint\n"
           "nnunet-sacl study -d 17 -c 3d_fullres --seeds 1 2 3 --dry-run \\\n"
           "    -tr nnUNetTrainer_seeded SACLTrainer\n"
           "nnunet-sacl study -d 17 -c 3d_fullres -tr nnUNetTrainer SACLTrainer \\\n"
           "    --slurm-array runs.sbatch")


def add_arguments(p) -> None:
    p.add_argument("-d", required=True, help="dataset name or id")
    p.add_argument("-c", required=True, help="configuration (2d, 3d_fullres, ...)")
    p.add_argument("-tr", nargs="+", required=True, metavar="TRAINER",
                   help="trainers; the first is the baseline every other one is compared with")
    p.add_argument("-f", nargs="+", type=int, default=list(range(DEFAULT_FOLDS)), metavar="FOLD",
                   help="folds (default %(default)s)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-device", "--device", dest="device", default=None,
                   help="cuda, cpu or mps, as nnUNetv2_train's -device (default: cuda if available)")
    p.add_argument("--test-images", help="evaluate on these images (nnU-Net's imagesTs layout) instead of the "
                                         "validation folds; each fold's model predicts them")
    p.add_argument("--test-labels", help="labels of --test-images (one per case)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE_MM,
                   help=f"NSD tolerance in mm (default {DEFAULT_TOLERANCE_MM:g})")
    p.add_argument("--nsd-method", choices=NSD_METHODS, default=NSD_METHODS[0],
                   help="NSD by boundary voxels (default) or by area-weighted surface elements, as FLARE scores it "
                        "(see docs/evaluation.md)")
    p.add_argument("--weights", nargs="+", metavar="LABEL=FILE",
                   help="weights files for arms written -tr TRAINER@LABEL: that arm is TRAINER trained with "
                        "nnUNetv2_train -pretrained_weights FILE (FILE may hold {fold}), under its own plans "
                        "identifier PLANS_weights_LABEL so that its output folder is its own")
    p.add_argument("--train-cases", nargs="+", metavar="K",
                   help="regimes: each fold trains on K of its training cases (validation and test cases "
                        "unchanged; a seeded, nested subset, the same for every trainer) through a derived nnU-Net "
                        "dataset per K; 'all' = the dataset itself. Each regime reports in STUDY_DIR/K<k>")
    p.add_argument("--seeds", nargs="+", metavar="SEED",
                   help="train every arm x fold once per seed ($SACL_SEED; each seed's runs under the plans "
                        "identifier PLANS_seedS) and compare runs: verdicts must stand clear of the baseline's "
                        "seed-to-seed spread (docs/evaluation.md). Without it: one run per arm and fold, whose "
                        "statistics cover one seed")
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the --train-cases subsets (default 0)")
    p.add_argument("-o", default="study", metavar="STUDY_DIR", help="output folder (default ./study)")
    p.add_argument("--print-commands", action="store_true",
                   help="print one nnUNetv2_train line per unfinished run and stop (for a cluster)")
    p.add_argument("--slurm-array", metavar="FILE", help="write an sbatch array script of the unfinished runs and stop")
    p.add_argument("--dry-run", action="store_true",
                   help="print the runs, their iterations, the estimated hours and the SLURM array size; train and "
                        "write nothing")
    p.add_argument("--seconds-per-iteration", type=float, metavar="S",
                   help="with --dry-run: price an iteration at S seconds (e.g. a GPU's, docs/performance.md) "
                        "instead of probing the baseline's train step on -device here")


def command_line(args) -> str:
    """The study's own command, for the report (reproducible as written)."""
    cmd = ["nnunet-sacl", "study", "-d", args.d, "-c", args.c, "-tr", *args.tr, "-f", *map(str, args.f), "-p", args.p,
           "-device", args.device, "-o", args.o, "--tolerance", f"{args.tolerance:g}", "--nsd-method", args.nsd_method]
    if args.test_images:
        cmd += ["--test-images", args.test_images, "--test-labels", args.test_labels]
    if args.weights:
        cmd += ["--weights", *args.weights]
    if args.train_cases:
        cmd += ["--train-cases", *map(str, args.train_cases), "--subset-seed", str(args.subset_seed)]
    if args.seeds:
        cmd += ["--seeds", *map(str, args.seeds)]
    return shlex.join(cmd)


def run(args) -> int:
    from nnunet_sacl.analysis.study import (StudyError, make_study, pending_commands, planned_regimes,
                                            regime_studies, run_regimes, slurm_array_script)
    args.device = default_device(args.device)
    stop_after_commands = bool(args.print_commands or args.slurm_array)
    if args.seconds_per_iteration is not None and not args.dry_run:
        raise CommandError("--seconds-per-iteration prices a --dry-run; add --dry-run")
    if args.dry_run and stop_after_commands:
        raise CommandError("--dry-run prints the plan only; run --print-commands / --slurm-array without it")
    # a failed training or prediction (RuntimeError) and unreadable inputs are one line too, exit code 1
    with refusing(StudyError, RuntimeError, ValueError, FileNotFoundError):
        study = make_study(args.d, args.c, args.tr, args.f, args.p, args.device, args.o, args.test_images,
                           args.test_labels, args.tolerance, args.nsd_method, args.weights, args.train_cases,
                           weights_files_needed=not (stop_after_commands or args.dry_run), seeds=args.seeds)
        if args.dry_run:
            from nnunet_sacl.analysis.study_plan import dry_run
            print(dry_run(planned_regimes(study, args.train_cases, args.subset_seed), args.seconds_per_iteration))
            return 0
        studies = regime_studies(study, args.train_cases, args.subset_seed)
        if stop_after_commands:
            commands = pending_commands(studies)
            if args.print_commands:
                print("\n".join(commands))
            if args.slurm_array:
                if not commands:
                    raise CommandError("every run has finished: no array script to write; run study without "
                                       "--slurm-array to evaluate")
                Path(args.slurm_array).write_text(slurm_array_script(study, commands))
                print(f"{len(commands)} run(s) written to {args.slurm_array} (sbatch {args.slurm_array})",
                      file=sys.stderr)
            return 0
        report = run_regimes(studies, command_line(args))
    print(f"report: {report}")
    return 0


COMMANDS = [Command("study", "train trainers x folds with nnU-Net, compare them with the first (paired statistics) "
                             "and report cost", EXAMPLE, add_arguments, run)]
