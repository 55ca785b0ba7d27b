"""kiln covers at least 95% of the public names of torch 2.13's torch.nn, nn.functional,
nn.init, nn.utils (+rnn), optim, optim.lr_scheduler and utils.data (less the documented
exclusions), and PyTorch's `torch.nn.modules.<file>` import paths resolve to kiln's classes."""

import importlib
import inspect
import types

import pytest
import torch
import torch.nn.modules

import kiln  # noqa: F401
from tests.nn.nn_api_exclusions import EXCLUSIONS

NAMESPACES = ["nn", "nn.functional", "nn.init", "nn.utils", "nn.utils.rnn", "optim",
              "optim.lr_scheduler", "utils.data"]


def public_names(namespace: str) -> set[str]:
    """PyTorch's own public classes and functions in `torch.<namespace>`: no modules, no
    typing aliases or constants, nothing whose definition lives outside torch."""
    module = importlib.import_module("torch." + namespace)
    names = set()
    for name in dir(module):
        if name.startswith("_"):
            continue
        value = getattr(module, name)
        if isinstance(value, types.ModuleType):
            continue
        if not (inspect.isclass(value) or inspect.isfunction(value)
                or inspect.isbuiltin(value)):
            continue
        if not getattr(value, "__module__", "").startswith("torch") or value is torch.Tensor:
            continue        # typing imports, and torch.Tensor imported for annotations
        names.add(name)
    return names


def coverage(namespace: str) -> tuple[int, int, list[str]]:
    wanted = public_names(namespace) - set(EXCLUSIONS[namespace])
    ours = importlib.import_module("kiln." + namespace)
    missing = sorted(n for n in wanted if not hasattr(ours, n))
    return len(wanted) - len(missing), len(wanted), missing


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_namespace_coverage_at_least_95_percent(namespace):
    have, total, missing = coverage(namespace)
    print(f"torch.{namespace}: {have}/{total} = {have / total:.1%}; missing: {missing}")
    assert have / total >= 0.95, f"kiln.{namespace} covers {have}/{total}; missing {missing}"


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_exclusions_name_real_torch_names_kiln_lacks(namespace):
    """Every exclusion is a real public torch name, kiln does not have it, and it has a reason
    (a stale entry would hide a regression or inflate the count)."""
    names = set(dir(importlib.import_module("torch." + namespace)))
    ours = importlib.import_module("kiln." + namespace)
    for name, reason in EXCLUSIONS[namespace].items():
        assert name in names, f"torch.{namespace}.{name} does not exist"
        assert not hasattr(ours, name), f"kiln.{namespace}.{name} exists: drop the exclusion"
        assert len(reason) > 20


def _torch_module_files() -> list[str]:
    import pkgutil
    return [m.name for m in pkgutil.iter_modules(torch.nn.modules.__path__)
            if not m.name.startswith("_")]


@pytest.mark.parametrize("file", _torch_module_files())
def test_torch_nn_modules_import_paths(file):
    """`from torch.nn.modules.<file> import <Class>` works with kiln for every public class
    PyTorch defines there (and the private bases scripts subclass: _Loss, _ConvNd, ...)."""
    torch_mod = importlib.import_module("torch.nn.modules." + file)
    defined = [n for n, v in vars(torch_mod).items() if inspect.isclass(v)
               and v.__module__ == torch_mod.__name__ and not n.startswith("_")]
    if not any(hasattr(kiln.nn, n) for n in defined):
        pytest.skip(f"torch.nn.modules.{file} defines nothing public kiln has")
    kiln_mod = importlib.import_module("kiln.nn.modules." + file)
    for name in defined:
        if name in EXCLUSIONS["nn"]:
            continue
        assert hasattr(kiln_mod, name), f"kiln.nn.modules.{file} lacks {name}"
        if hasattr(kiln.nn, name):
            assert getattr(kiln_mod, name) is getattr(kiln.nn, name), f"{file}.{name}"
    for private in ("_Loss", "_WeightedLoss", "_ConvNd", "_BatchNorm", "_DropoutNd",
                    "_MaxPoolNd", "_InstanceNorm"):
        if hasattr(torch_mod, private):
            assert hasattr(kiln_mod, private), f"{file}.{private}"


def test_module_utils_helpers():
    from kiln.nn.modules.utils import _pair, _single, _triple, \
        consume_prefix_in_state_dict_if_present
    assert _pair(3) == (3, 3) and _single([4]) == (4,) and _triple(1) == (1, 1, 1)
    state = {"module.a": 1, "b": 2}
    consume_prefix_in_state_dict_if_present(state, "module.")
    assert state == {"a": 1, "b": 2}
