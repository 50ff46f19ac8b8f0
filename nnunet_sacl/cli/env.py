"""``nnunet-sacl env``: can nnU-Net find the SACL trainers? Its answer is a check's result (what to export, exit code
1 when nnUNet_extTrainer is not right), printed as it is, not a refused input."""
import sys

from nnunet_sacl.cli import Command

EXAMPLE = ("nnunet-sacl env\n"
           "# prints the export line; exit code 1 if nnUNet_extTrainer is not right")


def add_arguments(p) -> None:
    pass


def run(args) -> int:
    from nnunet_sacl.environment import export_line, ext_trainer_problems
    problems = ext_trainer_problems()
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"nnUNet_extTrainer is set up for SACL ({export_line()})")
    return 1 if problems else 0


COMMANDS = [Command("env", "check that nnU-Net can find the SACL trainers", EXAMPLE, add_arguments, run)]
