"""Real values for the label tensors of a step that otherwise runs on fake tensors (accounting.py).

Under ``FakeTensorMode`` no tensor has values, so code that branches on data cannot run: SACL's mask pooling asks
which organs a patch holds (``nonzero``) and checks the label range (``bool(...)``), and both depend only on the
labels. ``LabelValues`` keeps a real CPU copy next to every fake tensor computed from the labels alone (and from
tensors made inside the step without inputs, such as ``arange``): an op whose tensor inputs all have real values
is also run on them, so ``nonzero`` and ``item()`` get their true answers. The image and the weights stay fake,
so the convolutions are never computed and the network runs at full scale in seconds.

Two kinds of values are assumed rather than computed, because they depend on the weights: finiteness checks
(``isfinite`` of a loss is answered True, ``isnan``/``isinf`` False), so the counted step is the one that updates
the weights. Results with more than ``max_elements`` elements keep no real value (the paper-style step's organ
masks at 117 organs would take gigabytes; they are only multiplied with the fake image).

An op that mutates a tensor with other, fake-only inputs drops that tensor's real value, so a value is never stale
(a mutation through a fake-only view of a tracked tensor is the one case not caught; the steps counted have none).
"""
from typing import Optional

import torch
from torch._subclasses.fake_tensor import (DataDependentOutputException, DynamicOutputShapeException,
                                           FakeTensor, FakeTensorMode)
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils.weak import WeakIdKeyDictionary

CPU = torch.device("cpu")

# values that depend on the weights, answered so that the step runs its updating branch (torch functions: isfinite
# is decomposed before it reaches the dispatcher)
ASSUMED = {torch.isfinite: True, torch.Tensor.isfinite: True, torch.isnan: False, torch.Tensor.isnan: False,
           torch.isinf: False, torch.Tensor.isinf: False}


class AssumeFinite(TorchFunctionMode):
    """isfinite / isnan / isinf of a tensor without a real value answer 'finite' (see the module docstring)."""

    def __init__(self, labels: "LabelValues"):
        super().__init__()
        self.labels = labels

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in ASSUMED and isinstance(out, FakeTensor) and self.labels.value(out) is None:
            with _disable_current_modes():
                self.labels.values[out] = torch.full(out.shape, ASSUMED[func], dtype=torch.bool)
        return out


class LabelValues(TorchDispatchMode):
    """Dispatch mode (above a FakeTensorMode) that carries real values for label-derived tensors; see the module
    docstring. ``track(real, device)`` turns a real tensor into a tracked fake one on ``device``."""

    def __init__(self, fake_mode: FakeTensorMode, max_elements: int = 64 * 1024 ** 2):
        super().__init__()
        self.fake_mode = fake_mode
        self.max_elements = max_elements
        self.values = WeakIdKeyDictionary()
        self.real_ops = 0                       # ops also run on real values (for the test and the curious)

    def track(self, real: torch.Tensor, device) -> torch.Tensor:
        with _disable_current_modes():          # called from inside the modes too: keep the value real
            real = real.detach().to(CPU)
        with self.fake_mode:
            fake = self.fake_mode.from_tensor(real).to(device)
        self.values[fake] = real
        return fake

    def value(self, tensor: torch.Tensor) -> Optional[torch.Tensor]:
        """The real value of a tensor (a plain tensor is its own), None for a fake-only one."""
        if not isinstance(tensor, FakeTensor):
            return tensor
        return self.values.get(tensor)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        known = all(self.value(t) is not None for t in inputs)
        if not known:
            out = func(*args, **kwargs)
            self._forget_mutated(func, args, kwargs)
            return out
        try:
            out = func(*args, **kwargs)
        except (DataDependentOutputException, DynamicOutputShapeException):
            out = None                          # nonzero, item(), ...: the real values answer it
        if out is not None and not self._small(out):
            self._forget_mutated(func, args, kwargs)
            return out
        real_args, real_kwargs = pytree.tree_map(self._real_argument, (args, kwargs))
        with _disable_current_modes():
            real_out = func(*real_args, **real_kwargs)
        self.real_ops += 1
        if out is None:
            device = next((t.device for t in inputs), CPU)
            out = pytree.tree_map(lambda r: self.track(r, device) if isinstance(r, torch.Tensor) else r, real_out)
            return out
        for fake, real in zip(pytree.tree_leaves(out), pytree.tree_leaves(real_out)):
            if isinstance(fake, FakeTensor) and isinstance(real, torch.Tensor):
                self.values[fake] = real
        return out

    def _small(self, out) -> bool:
        return all(t.numel() <= self.max_elements for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor))

    def _real_argument(self, x):
        if isinstance(x, torch.Tensor):
            return self.value(x)
        if isinstance(x, torch.device) and x.type != "cpu":
            return CPU
        return x

    def _forget_mutated(self, func, args, kwargs) -> None:
        """Tensors written by an op whose result is fake-only lose their real value."""
        schema = getattr(func, "_schema", None)
        if schema is None:
            return
        named = dict(kwargs)
        for argument, value in zip(schema.arguments, args):
            named[argument.name] = value
        for argument in schema.arguments:
            if argument.alias_info is not None and argument.alias_info.is_write and argument.name in named:
                for t in pytree.tree_leaves(named[argument.name]):
                    if isinstance(t, torch.Tensor):
                        self.values.pop(t, None)
