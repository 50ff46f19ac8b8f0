"""The environment nnU-Net needs to find SACL's trainers, checked with messages that say what to export."""
import os
from typing import List

from nnunet_sacl import trainers_folder


def export_line() -> str:
    return f'export nnUNet_extTrainer="{trainers_folder()}"'


def ext_trainer_problems(environ=os.environ) -> List[str]:
    """What is wrong with nnUNet_extTrainer for finding SACLTrainer (empty list: nothing)."""
    value = environ.get("nnUNet_extTrainer")
    if not value:
        return [f"nnUNet_extTrainer is not set, so `nnUNetv2_train ... -tr SACLTrainer` and `nnUNetv2_predict "
                f"... -tr SACLTrainer` cannot find the trainer. Run:\n    {export_line()}"]
    folders = [p for p in value.split(os.pathsep) if p.strip()]
    missing = [p for p in folders if not os.path.isdir(p)]
    ours = [p for p in folders if os.path.isfile(os.path.join(p, "sacl_trainers.py"))]
    problems = [f"nnUNet_extTrainer names {p}, which is not a folder" for p in missing]
    if not ours:
        problems.append(f"nnUNet_extTrainer={value} holds no folder with SACL's trainer modules "
                        f"(sacl_trainers.py). Run:\n    {export_line()}")
    return problems


def planning_env(environ) -> dict:
    """A copy of environ without nnUNet_n_proc_DA, for nnU-Net's planning: the variable is for training only, and
    planning passes it to torch.set_num_threads, where 0 (single-threaded loading) crashes."""
    return {k: v for k, v in environ.items() if k != "nnUNet_n_proc_DA"}


def with_ext_trainer(environ: dict) -> dict:
    """A copy of environ whose nnUNet_extTrainer includes SACL's trainers folder (for our own subprocesses)."""
    env = dict(environ)
    folders = [p for p in env.get("nnUNet_extTrainer", "").split(os.pathsep) if p.strip()]
    if str(trainers_folder()) not in folders:
        folders.insert(0, str(trainers_folder()))
    env["nnUNet_extTrainer"] = os.pathsep.join(folders)
    return env
