"""``nnunet-sacl train`` / ``python -m nnunet_sacl.cli train``: ``nnUNetv2_train``'s arguments, for torchrun.

Under torchrun (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` ... in the environment) every worker initialises
``torch.distributed`` from the environment (nccl on CUDA, gloo on the CPU), uses ``cuda:LOCAL_RANK`` and runs the
trainer with ``TorchrunMixin`` (nnunet_sacl.nnunet.torchrun), on as many nodes as the rendezvous joins. When
torchrun restarts the group (``--max-restarts``), every worker resumes from the run's latest checkpoint by itself.
Without torchrun's variables it is one process, exactly ``nnUNetv2_train``.

This package is the launcher (a library: ``launch(args)``); the command line (``nnunet_sacl.cli.train``: ``nnunet-sacl
train``, ``python -m nnunet_sacl.cli train``) parses the options and calls it.
"""
import difflib
import gc
import os
import re
import sys
import traceback
from os.path import isfile, join

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_COLLECTIVE_TIMEOUT_S = 1800


class LaunchError(RuntimeError):
    """A setting that cannot work, found before any training."""


def torchrun_environment(environ=os.environ):
    """torchrun's variables as a dict, or None outside torchrun; a partial set is refused."""
    if "RANK" not in environ:
        return None
    missing = [v for v in TORCHRUN_VARIABLES if not environ.get(v)]
    if missing:
        raise LaunchError(
            f"RANK is set ({environ['RANK']}) but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: "
            f"start workers with torchrun (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT), "
            f"or unset RANK to train in one process.")
    return {v: environ[v] for v in TORCHRUN_VARIABLES}


def choose_backend(requested: str, device: str) -> str:
    if requested == "auto":
        return "nccl" if device == "cuda" else "gloo"
    if requested == "nccl" and device != "cuda":
        raise LaunchError(f"--dist-backend nccl needs -device cuda (got -device {device}): nccl runs on GPUs only; "
                          f"use gloo (the default for -device {device}).")
    return requested


def check_trainer(name: str) -> type:
    """The trainer class ``-tr`` names, as nnU-Net finds it; refuses one nnU-Net cannot find, before anything
    starts, naming the closest names it could find: nnU-Net's own trainers, nnunet-sacl's and the classes in the
    folders of nnUNet_extTrainer."""
    import warnings
    from contextlib import redirect_stdout
    from io import StringIO

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    try:
        # nnU-Net narrates its search, and the modules it imports warn about their own dependencies
        with warnings.catch_warnings(), redirect_stdout(StringIO()):
            warnings.simplefilter("ignore")
            return recursive_find_trainer_class_by_name(name)
    except RuntimeError:                    # nnU-Net's "Could not find requested nnunet trainer"
        pass
    from nnunet_sacl.environment import ext_trainer_problems
    from nnunet_sacl.nnunet import short_runs, variants
    ours = set(variants.__all__) | set(short_runs.__all__)
    if name in ours:
        raise LaunchError(f"trainer {name!r} is nnunet-sacl's, but nnU-Net cannot find it: "
                          + " ".join(ext_trainer_problems()))
    close = difflib.get_close_matches(name, sorted(ours | stock_trainer_names() | ext_trainer_class_names()), n=1)
    if close:
        raise LaunchError(f"no trainer named {name!r} (did you mean {close[0]}?)")
    raise LaunchError(f"no trainer named {name!r} among nnU-Net's, nnunet-sacl's and those in nnUNet_extTrainer "
                      f"({os.environ.get('nnUNet_extTrainer') or 'not set'})")


def stock_trainer_names() -> set:
    """Names of nnU-Net's own trainer classes (every module of nnunetv2.training.nnUNetTrainer that imports)."""
    import importlib
    import pkgutil
    import warnings
    from contextlib import redirect_stdout
    from io import StringIO

    import nnunetv2.training.nnUNetTrainer as stock
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    names = set()
    with warnings.catch_warnings(), redirect_stdout(StringIO()):   # what the variants' imports say is not ours
        warnings.simplefilter("ignore")
        for info in pkgutil.walk_packages(stock.__path__, stock.__name__ + "."):
            try:
                module = importlib.import_module(info.name)
            except ImportError:             # a variant that needs an optional package
                continue
            names |= {n for n, o in vars(module).items() if isinstance(o, type) and issubclass(o, nnUNetTrainer)}
    return names


def ext_trainer_class_names(environ=os.environ) -> set:
    """Names of the classes defined in the Python files of nnUNet_extTrainer's folders (read, not imported)."""
    import ast
    from pathlib import Path
    names = set()
    for folder in filter(str.strip, environ.get("nnUNet_extTrainer", "").split(os.pathsep)):
        for path in sorted(Path(folder).rglob("*.py")) if Path(folder).is_dir() else []:
            try:
                tree = ast.parse(path.read_text())
            except (OSError, SyntaxError, ValueError):
                continue
            names |= {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    return names


def check_restartable(environ=os.environ) -> None:
    """torchrun's restarts need TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: with the rendezvous store shared across
    restarts (its default), the restarted workers' process group finds the previous attempt's addresses in the
    store and waits on them forever (pytorch/pytorch#135712)."""
    restarts = int(environ.get("TORCHELASTIC_MAX_RESTARTS", 0) or 0)
    if restarts > 0 and environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        raise LaunchError(
            f"torchrun --max-restarts {restarts} needs TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in torchrun's environment "
            f"(export it before torchrun, on every node): with torchrun's shared rendezvous store a restarted "
            f"group hangs while connecting. Without restarts, leave --max-restarts at 0.")


# gloo's transport errors reach Python as plain RuntimeErrors that start with gloo's source location, e.g.
# "[.../gloo/transport/tcp/pair.cc:561] Connection closed by peer ..." (a rank died) or
# "[.../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 1800000ms for recv operation" (torch 2.14)
GLOO_TRANSPORT_ERROR = re.compile(r"\[[^\]\n]*gloo/transport/[^\]\n]*\]")


def lost_a_rank(error: BaseException) -> bool:
    """Whether a collective failed because another rank is gone or did not answer: torch.distributed's
    communication errors (DistError: DistBackendError, DistNetworkError, DistStoreError) and gloo's transport
    errors, which torch raises as plain RuntimeErrors. Any other error, whatever its text, is not."""
    from torch import distributed as dist
    return isinstance(error, dist.DistError) or (
        isinstance(error, RuntimeError) and bool(GLOO_TRANSPORT_ERROR.match(str(error))))


def restart_number(environ=os.environ) -> int:
    """How many times torchrun has restarted this worker group (0 on the first attempt)."""
    return int(environ.get("TORCHELASTIC_RESTART_COUNT", 0) or 0)


def set_threads(device: str, local_workers: int = 1) -> None:
    """nnUNetv2_train's threads (run_training_entry sets them inline before training, so they are copied here;
    tests/test_torchrun.py compares them with nnU-Net's for every device): on the CPU all cores, shared here by
    this node's `local_workers` workers (nnU-Net trains on the CPU in one process only; every worker taking all
    cores would run local_workers x cores threads on the cores), on a GPU one thread and one inter-op thread."""
    import multiprocessing
    import torch
    if device == "cpu":
        torch.set_num_threads(max(1, multiprocessing.cpu_count() // local_workers))
    elif device == "cuda":
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)


def set_cudnn_for_training() -> None:
    """nnU-Net's cuDNN settings for training, which its run_training and run_ddp set inline after
    maybe_load_checkpoint (so they are copied here; tests/test_torchrun.py compares them with nnU-Net's):
    autotuned convolution algorithms, not only deterministic ones; whenever CUDA is available, whatever -device."""
    import torch
    from torch.backends import cudnn
    if torch.cuda.is_available():
        cudnn.deterministic = False
        cudnn.benchmark = True


def _read_plans(args):
    """The dataset's preprocessed folder and plans, with the configuration checked (``nnunet.plans.read_plans``)."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunet_sacl.nnunet.plans import read_plans
    dataset = args.dataset_name_or_id
    dataset = maybe_convert_to_dataset_name(dataset if dataset.startswith("Dataset") else int(dataset))
    base = join(nnUNet_preprocessed, dataset)
    try:
        plans_file, plans = read_plans(base, args.p, args.configuration)
    except (FileNotFoundError, ValueError) as e:
        raise LaunchError(str(e)) from None
    return base, plans_file, plans


def _load_trainer(args, base: str, plans: dict, device, continue_training: bool):
    """As nnU-Net's get_trainer_from_args, with the trainer class behind TorchrunMixin (same name)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_sacl.nnunet.torchrun import with_torchrun

    trainer_class = with_torchrun(recursive_find_trainer_class_by_name(args.tr))
    plans["continue_training"] = continue_training
    fold = args.fold if args.fold == "all" else int(args.fold)
    return trainer_class(plans=plans, configuration=args.configuration, fold=fold,
                         dataset_json=load_json(join(base, "dataset.json")), device=device)


def check_partial_labels(args, trainer_class: type) -> None:
    """Refuses segmentation training, by any trainer, on a merged dataset with partial labels (its preprocessed
    dataset.json says ``sacl_partial_labels``); pretraining trainers (SACLPretrainer and its variants) may train on
    it."""
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from nnunet_sacl.nnunet.partial_labels import refuse_partial_labels
    from nnunet_sacl.nnunet.pretrainer import SACLPretrainer
    if issubclass(trainer_class, SACLPretrainer):
        return
    try:
        base, _, plans = _read_plans(args)
    except RuntimeError as e:    # nnU-Net's own: a folder variable not set, a dataset it cannot find
        raise LaunchError(" ".join(str(e).split())) from None
    try:
        refuse_partial_labels(load_json(join(base, "dataset.json")), plans["dataset_name"], args.tr)
    except RuntimeError as e:
        raise LaunchError(str(e)) from None


def _has_checkpoint(trainer) -> bool:
    """A checkpoint in the fold folder, or in SACLTrainer's phase-1 folder (its pretrainer's, under
    fold_X/pretraining)."""
    folders = [trainer.output_folder] + [f for f in [getattr(trainer, "pretraining_folder", None)] if f]
    return any(isfile(join(f, f"checkpoint_{n}.pth")) for f in folders for n in ("final", "latest", "best"))


def run_worker(args, env: dict) -> int:
    """One torchrun worker: process group from the environment, the trainer, training and final validation."""
    from datetime import timedelta

    import torch
    from torch import distributed as dist
    from nnunetv2.run.run_training import maybe_load_checkpoint
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_sacl.nnunet.torchrun import batch_split_problem

    if args.val and args.c:
        raise LaunchError("--c and --val cannot be combined (as nnUNetv2_train)")
    backend = choose_backend(args.dist_backend, args.device)
    check_restartable()
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    base, plans_file, plans = _read_plans(args)
    batch_size = PlansManager(plans).get_configuration(args.configuration).batch_size
    problem = batch_split_problem(batch_size, world, f"{plans_file}, configuration {args.configuration}")
    if problem:
        raise LaunchError(problem)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise LaunchError("-device cuda but CUDA is not available on this node; use -device cpu")
    # nnU-Net's set-up, in its order (run_training_entry, run_ddp): threads, process group, device, trainer,
    # checkpoint, cuDNN flags, training
    set_threads(args.device, local_workers=int(os.environ.get("LOCAL_WORLD_SIZE", 1) or 1))
    dist.init_process_group(backend, init_method="env://", timeout=timedelta(seconds=args.collective_timeout))
    trainer = None
    try:
        if args.device == "cuda":
            torch.cuda.set_device(int(env["LOCAL_RANK"]))   # nnU-Net: cuda:<global rank>, one node only
        restart = restart_number()
        # the trainer learns of --c from its plans, as from nnUNetv2_train (SACLTrainer resumes phase 1 from
        # fold_X/pretraining by itself); a restart by torchrun continues as --c would
        trainer = _load_trainer(args, base, plans, torch.device(args.device), args.c or (restart > 0 and not args.val))
        if args.disable_checkpointing:
            trainer.disable_checkpointing = True
        # after a restart by torchrun, continue from the latest checkpoint (the pretrained weights are in it);
        # with no checkpoint written yet, start as the first attempt did
        resume = args.c or (restart > 0 and not args.val and _has_checkpoint(trainer))
        maybe_load_checkpoint(trainer, resume, args.val, None if resume else args.pretrained_weights)
        set_cudnn_for_training()
        if restart:
            trainer.print_to_log_file(
                f"torchrun restart {restart} of at most {os.environ.get('TORCHELASTIC_MAX_RESTARTS', '?')}: "
                + ("resumed from the latest checkpoint" if resume else "no checkpoint yet, started over")
                + f" ({world} ranks)")
        if rank == 0:
            print(f"nnunet-sacl train: {world} rank(s), backend {backend}, device {trainer.device} on rank 0, "
                  f"collective timeout {args.collective_timeout:g} s", flush=True)
        if not args.val:
            trainer.run_training()
        if args.val_best:
            trainer.load_checkpoint(join(trainer.output_folder, "checkpoint_best.pth"))
        trainer.perform_actual_validation(args.npz)
    except Exception as e:
        if not lost_a_rank(e):
            raise
        message = (f"{traceback.format_exc()}nnunet-sacl train, rank {rank} of {world}: lost contact with the other "
                   f"ranks (a rank died, or did not answer within the collective timeout of "
                   f"{args.collective_timeout:g} s); torchrun's summary names the rank that failed. Restart with "
                   f"--c, or let torchrun restart the group (--max-restarts). {type(e).__name__}: "
                   f"{str(e).splitlines()[0] if str(e) else ''}")
        if trainer is not None:
            trainer.print_to_log_file(message, also_print_to_console=False)
        print(message, file=sys.stderr, flush=True)
        return 1
    finally:
        # DDP's reducer holds the process group: release the trainer (and its DDP-wrapped network) before the group
        # is destroyed, not in the interpreter's teardown, where gloo's threads can abort the process ("terminate
        # called without an active exception", seen on rank 1 after a finished run)
        trainer = None
        gc.collect()
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # the group may already be broken after a lost rank
                pass
    return 0


def run_single(args) -> int:
    """No torchrun: exactly nnUNetv2_train (one process)."""
    import torch
    from nnunetv2.run.run_training import run_training
    if args.dist_backend == "nccl":
        choose_backend("nccl", args.device)
    set_threads(args.device)   # run_training sets the cuDNN flags itself
    run_training(args.dataset_name_or_id, args.configuration, args.fold, args.tr, args.p, args.pretrained_weights,
                 1, args.npz, args.c, args.val, args.disable_checkpointing, args.val_best,
                 device=torch.device(args.device))
    return 0


def launch(args) -> int:
    """``args`` as ``nnunet-sacl train`` parses them: one torchrun worker under torchrun, else one process exactly as
    nnUNetv2_train. LaunchError: a setting that cannot work, found before any training."""
    env = torchrun_environment()
    check_partial_labels(args, check_trainer(args.tr))
    if env is None:
        return run_single(args)
    return run_worker(args, env)

