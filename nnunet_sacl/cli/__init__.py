"""``nnunet-sacl``: the package's own commands (nnU-Net's commands stay as they are).

One module of this package per command (two for a pair that shares its options): the options (``add_arguments``),
help text and examples, and ``run(args)``, which imports the library inside the function and calls plain library
functions. At module level this package imports argparse, the standard library and the defaults it shows, from the
library modules that define them (none of which loads numpy, SimpleITK, torch or nnU-Net at import; see
``nnunet_sacl.defaults``), so ``nnunet-sacl --help`` and ``nnunet-sacl env`` start without those. The library never
imports this package; ``python -m nnunet_sacl.cli`` (``nnunet-sacl``; ``python -m nnunet_sacl.cli train`` is what
torchrun starts) is its ``__main__``.

Errors: a command refuses an input by raising ``CommandError`` (``refusing(...)`` turns the library's own error
classes into one); ``main`` prints it as one line, ``nnunet-sacl COMMAND: error: MESSAGE``, on stderr and returns 1.
argparse's own usage errors stay argparse's (exit code 2). Any other exception is a bug and keeps its traceback.
"""
import argparse
import importlib
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Optional

PROG = "nnunet-sacl"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples keep their lines (argparse would re-wrap them mid-argument); an option's default is shown unless its
    help already names it or there is none to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


RAW = HelpFormatter
# the modules of this package that define the commands, in the order of ``nnunet-sacl --help``
COMMAND_MODULES = ("env", "synthetic_data", "convert", "merge_datasets", "pseudo_label", "demo", "demo_data",
                   "export_submission", "evaluate", "embeddings", "check_weights", "prepare_finetune", "train", "study")


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help, example(s) shown under --help, options and what it does."""
    name: str
    help: str
    example: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: Optional[str] = None


class CommandError(Exception):
    """An input the command refuses; ``main`` prints ``nnunet-sacl COMMAND: error: MESSAGE`` and returns 1."""


@contextmanager
def refusing(*errors):
    """Inside the block, the library's errors of these classes are refusals of the input (``CommandError``, one
    line); any other exception keeps its traceback."""
    try:
        yield
    except errors as e:
        raise CommandError(str(e)) from e


def error_line(command: str, message) -> str:
    """``nnunet-sacl COMMAND: error: MESSAGE`` on one line (a message of several lines is joined by spaces)."""
    text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    return f"{PROG} {command}: error: {text}"


def run_command(command: Command, args: argparse.Namespace) -> int:
    """The command's exit code; a refusal is printed as one line on stderr and gives 1."""
    try:
        return command.run(args)
    except CommandError as e:
        print(error_line(command.name, e), file=sys.stderr)
        return 1


def default_device(device: Optional[str]) -> str:
    """``device`` as given, else cuda when torch finds one, else cpu (torch is imported only then)."""
    if device is not None:
        return device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def commands() -> list:
    """Every ``Command``, in the order of ``nnunet-sacl --help``."""
    found = []
    for name in COMMAND_MODULES:
        found += importlib.import_module(f"{__name__}.{name}").COMMANDS
    return found


def add_command(subparsers, command: Command) -> argparse.ArgumentParser:
    p = subparsers.add_parser(command.name, help=command.help, description=command.description or command.help,
                              epilog=command.example, formatter_class=RAW)
    command.add_arguments(p)
    p.set_defaults(cli_command=command)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="SACL pretraining for nnU-Net v2")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in commands():
        add_command(subparsers, command)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.cli_command, args)
