"""The package's layout promises: every trainer class is found by ``nnUNetv2_train -tr`` (none left out of the
exports), shipped trainers stand apart from the short CPU run lengths, the command line lives in nnunet_sacl/cli only
and the library never imports it, and test modules share helpers through tests/helpers.py only."""
import ast
import importlib
import os
import pkgutil
import re
from pathlib import Path

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

import nnunet_sacl
from nnunet_sacl.nnunet import short_runs, variants
from nnunet_sacl.train import stock_trainer_names


def package_trainer_classes() -> dict:
    """{name: class} of every public nnU-Net trainer class defined in any module of the installed package."""
    found = {}
    for info in pkgutil.walk_packages(nnunet_sacl.__path__, "nnunet_sacl."):
        if info.name.startswith("nnunet_sacl.ext_trainers"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (isinstance(obj, type) and issubclass(obj, nnUNetTrainer) and obj.__module__ == info.name
                    and not name.startswith("_")):
                found[name] = obj
    return found


def test_every_trainer_class_is_found_by_nnunet_train():
    """nnU-Net's lookup of ``-tr NAME`` (recursive_find_trainer_class_by_name): its own trainers first, then each
    module of the nnUNet_extTrainer folder. So every class must be exported by a module of trainers/ and no name
    may be one of nnU-Net's own."""
    classes = package_trainer_classes()
    assert {"SACLTrainer", "SACLPretrainer", "SACLTrainer_joint", "SACLTrainer_smoke", "nnUNetTrainer_demo"} <= \
        set(classes)
    assert not set(classes) & stock_trainer_names()
    folder = str(nnunet_sacl.trainers_folder())
    for name, cls in classes.items():
        found = recursive_find_python_class(folder, name, None, base_folder=folder,
                                            cleanup_imports_from_base_folder=True)
        assert found is cls, f"-tr {name} does not find {cls.__module__}.{name} through {folder}"


def test_shipped_trainers_stand_apart_from_the_short_runs():
    short = [getattr(short_runs, n) for n in short_runs.__all__]
    shipped = [getattr(variants, n) for n in variants.__all__]
    assert short and all(issubclass(c, short_runs.ShortRun) for c in short)
    assert shipped and not any(issubclass(c, short_runs.ShortRun) for c in shipped)
    assert {"SACLTrainer", "SACLPretrainer", "SACLTrainer_joint"} <= set(variants.__all__)


def test_test_modules_import_no_other_test_module():
    tests = Path(__file__).parent
    for path in sorted(tests.glob("*.py")):
        imports = re.findall(r"^\s*(?:from|import) tests\.(\w+)", path.read_text(), re.M)
        # helpers: the shared helpers; mutants: docs/testing.md's mutant table, runnable; trainers: the tests' trainer classes (no test modules)
        assert set(imports) <= {"helpers", "mutants", "trainers"}, \
            f"{path.name} imports {imports}: shared helpers go to tests/helpers.py"


def test_the_command_line_lives_in_the_cli_package_only():
    """Library modules hold no argparse: every option and every command's run is in nnunet_sacl/cli/."""
    package = Path(nnunet_sacl.__file__).parent
    cli = package / "cli"
    assert (cli / "__init__.py").is_file() and not (package / "cli.py").exists()
    offenders = [str(path.relative_to(package)) for path in sorted(package.rglob("*.py"))
                 if cli not in path.parents and re.search(r"\bargparse\b|\badd_cli\b", path.read_text())]
    assert not offenders, f"argparse outside nnunet_sacl/cli: {offenders}"


def _imports(path: Path) -> list:
    """(module, name) of every import in a file: ``import a.b`` gives ('a.b', None), ``from a import b`` ('a', 'b')."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [(node.module, alias.name) for alias in node.names]
    return found


def test_the_library_never_imports_the_command_line():
    """nnunet_sacl/cli imports library modules, never the reverse (no import circle, no arrow back up): no module
    outside cli/ imports it, an entry point neither (torchrun starts ``-m nnunet_sacl.cli train``)."""
    package = Path(nnunet_sacl.__file__).parent
    offenders = [f"{path.relative_to(package)}: {module} {name or ''}"
                 for path in sorted(package.rglob("*.py")) if package / "cli" not in path.parents
                 for module, name in _imports(path)
                 if module.startswith("nnunet_sacl.cli") or (module == "nnunet_sacl" and name == "cli")]
    assert not offenders, offenders


# the package's layers, lowest first: a module imports only from its own unit and the layers below it
LAYERS = [{"method", "files", "defaults", "__init__"}, {"nnunet"}, {"dataset_conversion", "environment"},
          {"analysis", "train"}, {"demo"}, {"cli"}]


def test_no_import_runs_back_up_the_layers():
    package = Path(nnunet_sacl.__file__).parent
    layer = {unit: n for n, units in enumerate(LAYERS) for unit in units}
    offenders = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).parts
        unit = parts[0] if len(parts) > 1 else path.stem
        assert unit in layer, f"{path}: add its unit to LAYERS"
        for module, name in _imports(path):
            if not module.startswith("nnunet_sacl"):
                continue
            target = module.split(".")[1] if "." in module else (name if name in layer else "__init__")
            if target != unit and layer.get(target, -1) >= layer[unit]:
                offenders.append(f"{path.relative_to(package)} -> {module}{'.' + name if name else ''}")
    assert not offenders, offenders


def test_no_module_imports_another_modules_private_names():
    """A module's _underscore names are its own: no module of the package or of trainers/ imports one from another."""
    package = Path(nnunet_sacl.__file__).parent
    offenders = [f"{path.name}: from {module} import {name}"
                 for path in sorted([*package.rglob("*.py"), *nnunet_sacl.trainers_folder().glob("*.py")])
                 for module, name in _imports(path)
                 if module.startswith("nnunet_sacl") and name and name.startswith("_") and not name.startswith("__")]
    assert not offenders, offenders


def test_every_mutant_site_is_in_the_code_once():
    """tests/mutants.py, docs/testing.md's mutants made runnable: every deliberate bug's site is still in the code
    exactly once (keyed by its function and the shape of its statements, so reformatting moves nothing), the mutated
    file compiles into other code, and its tests exist, so that the table cannot go stale when code moves."""
    from tests.mutants import MUTANTS, ROOT, check
    assert len(MUTANTS) >= 30
    for number, mutant in enumerate(MUTANTS, 1):
        assert check(mutant) == "", (number, mutant.promise, check(mutant))
        assert mutant.tests, number
        for node in mutant.tests:
            path, _, name = node.partition("::")
            assert f"def {name.split('[')[0]}(" in (ROOT / path).read_text(), (number, node)


def test_each_study_carries_its_arms_outside_the_package(monkeypatch):
    """A study's arms (docs/studies/NAME/arms/) are found by nnU-Net's own ``-tr`` lookup once that folder follows the
    package's trainers folder in nnUNet_extTrainer; none of them is a class of the installed package, and the arms
    folders hold trainer modules only (nnU-Net imports every module there)."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    studies = Path(__file__).resolve().parent.parent / "docs" / "studies"
    packaged = set(package_trainer_classes())
    folders = sorted(studies.glob("*/arms"))
    assert {f.parent.name for f in folders} >= {"prereg", "transfer", "length"}
    for folder in folders:
        monkeypatch.setenv("nnUNet_extTrainer", f"{nnunet_sacl.trainers_folder()}{os.pathsep}{folder}")
        modules = sorted(folder.glob("*.py"))
        assert modules and all(p.suffix == ".py" for p in folder.iterdir() if p.name != "__pycache__"), folder
        names = [m.group(1) for p in modules
                 for m in re.finditer(r"^class (\w+)\(", p.read_text(), re.M) if not m.group(1).startswith("_")]
        assert names and not set(names) & packaged, folder
        for name in names:
            assert recursive_find_trainer_class_by_name(name).__name__ == name


def test_a_mutant_site_survives_reformatting():
    """A guarded statement re-wrapped, re-spaced and commented is still the mutant's one site, and the mutant still
    applies there; another statement of the same function is not."""
    from tests.mutants import Mutant, check, mutated, sites
    source = ("class A:\n"
              "    def f(self, x):\n"
              "        y = x + 1  # one\n"
              "        return max(1, y // 2)\n")
    reformatted = ("class A:\n"
                   "    def f(self, x):\n"
                   "        y = x + 1\n"
                   "        # a comment and other line breaks\n"
                   "        return max(\n"
                   "            1,\n"
                   "            (y // 2),\n"
                   "        )\n")
    statement = Mutant("p", "f.py", "A.f", "return max(1, y // 2)\n", "return y\n", ("t",))
    expression = Mutant("p", "f.py", "A.f", "y // 2", "y", ("t",))
    for text in (source, reformatted):
        assert len(sites(statement, text)) == 1 and len(sites(expression, text)) == 1
        assert "return y\n" in mutated(statement, text)
        compile(mutated(expression, text), "f.py", "exec")
    assert sites(Mutant("p", "f.py", "f", "return max(1, y // 2)\n", "", ("t",)), source) == []   # wrong function
    assert sites(Mutant("p", "f.py", "A.f", "return max(2, y // 2)\n", "", ("t",)), source) == []  # other shape
    assert "sites" in check(Mutant("p", "nnunet_sacl/__init__.py", "trainers_folder", "return 1\n", "", ("t",)))
