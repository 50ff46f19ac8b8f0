"""Modules loaded on first use, so that ``nnunet-sacl --help`` and ``nnunet-sacl env`` start in a fraction of a
second: the subcommand modules register their options at start-up, but numpy and SimpleITK (about 1 s to import on
a busy 2-core machine; torch 4 s, imported inside the functions that need it) load only when a command runs."""
import importlib.util
import sys


def lazy_import(name: str):
    """``name``'s module as ``import name`` gives it, executed on the first attribute access (the standard
    library's ``importlib.util.LazyLoader``). An import that already happened is returned as it is."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
