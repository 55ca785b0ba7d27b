"""Random training steps that reach their state in the ways users write: compiled vs eager vs
PyTorch.

`generate(seed)` draws Python source (run in a fresh module namespace with `torch` bound to
kiln or to PyTorch) for a training step and the state it keeps between calls:

* *how the step reaches* its model, optimizer, scheduler, loss function (and EMA, counter):
  globals, a closure, arguments, a list / tuple / dict argument nested 1-3 levels, a trainer
  object 1-3 levels deep (plain objects, dataclasses, SimpleNamespaces; an argument or a
  global), a bound method of a trainer class, a global registry of dicts, or
  `functools.partial` binding them;
* *state made lazily by the user's code*: kiln's optimizers, or hand-written ones as tutorials
  write them (an `Optimizer` subclass cloning the first gradient into `self.state[p]`, one
  keeping a dict or list of buffers on `self`, one storing `p.momentum_buffer` on the
  parameter, an Adam that `zeros_like`s its moments under `no_grad` with a Python-int or
  tensor step); an EMA of the weights made on the first call; a
  step counter (tensor or Python int) on an object; a module buffer updated in forward; a
  batch norm's running statistics.

`check(spec)` runs five steps (a new batch each) eagerly in kiln, compiled in kiln and eagerly
in PyTorch from the same weights, and compares the losses and a snapshot afterwards
(parameters, buffers, optimizer state, EMA, counters). Compiled must equal eager (losses to
1e-5; state within 2e-5 or a few times eager's distance to PyTorch, as in fuzz_steps), and
eager must equal PyTorch (losses to 1e-4; state to 1e-4 relative, 5e-2 under an adaptive
optimizer, which magnifies rounding where a gradient is zero up to rounding). Each compiled
call is counted as a trace, a replay or an eager run; a call that runs eagerly must say why in
a warning, which `check` returns with the counts.

`python -m tests.fuzz_state FIRST COUNT` sweeps seeds, prints failing ones and tallies how the
compiled steps ran and why some ran eagerly.
"""

from __future__ import annotations

import collections
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np

STEPS = 5
PATHS = ["global", "closure", "arguments", "container", "trainer", "method", "registry",
         "partial"]
OPTIMIZERS = ["sgd_momentum", "adam", "rmsprop", "clone_state", "dict_buffers", "list_buffers",
              "zeros_adam_int", "zeros_adam_tensor", "param_attribute"]
# hand-written optimizers keep buffers where a scheduler cannot reach (not an Optimizer)
PLAIN = {"dict_buffers", "list_buffers"}
ADAPTIVE = {"adam", "rmsprop", "zeros_adam_int", "zeros_adam_tensor"}

_CLASSES = '''
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(4, {width}, bias={bias1})
{norm_init}        self.fc2 = torch.nn.Linear({width}, 3)
{seen_init}
    def forward(self, x):
{seen_update}        h = self.fc1(x)
{norm_call}        return self.fc2(torch.tanh(h))


class CloneMomentum(torch.optim.Optimizer):
    def __init__(self, params, lr=0.05, momentum=0.9):
        super().__init__(params, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "buf" not in state:
                    state["buf"] = torch.clone(p.grad).detach()
                else:
                    state["buf"].mul_(group["momentum"]).add_(p.grad)
                p.add_(state["buf"], alpha=-group["lr"])


class AttributeMomentum(torch.optim.Optimizer):
    def __init__(self, params, lr=0.05, momentum=0.9):
        super().__init__(params, dict(lr=lr, momentum=momentum))

    def step(self):
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if not hasattr(p, "momentum_buffer"):
                        p.momentum_buffer = p.grad.detach().clone()
                    else:
                        p.momentum_buffer.mul_(group["momentum"]).add_(p.grad)
                    p.sub_(group["lr"] * p.momentum_buffer)


class ZerosAdam(torch.optim.Optimizer):
    def __init__(self, params, lr=0.01, betas=(0.9, 0.99), eps=1e-8, tensor_step=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))
        self.tensor_step = tensor_step

    def step(self):
        with torch.no_grad():
            for group in self.param_groups:
                b1, b2 = group["betas"]
                for p in group["params"]:
                    state = self.state[p]
                    if len(state) == 0:
                        state["step"] = torch.zeros(()) if self.tensor_step else 0
                        state["exp_avg"] = torch.zeros_like(p)
                        state["exp_avg_sq"] = torch.zeros_like(p)
                    state["step"] += 1
                    state["exp_avg"].mul_(b1).add_(p.grad, alpha=1 - b1)
                    state["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                    denom = (state["exp_avg_sq"] / (1 - b2 ** state["step"])).sqrt() + group["eps"]
                    p.sub_(group["lr"] * (state["exp_avg"] / (1 - b1 ** state["step"])) / denom)


class BufferMomentum:
    """Not an Optimizer: its buffers in a {kind} on self."""
    def __init__(self, params, lr=0.05, momentum=0.9):
        self.params, self.lr, self.momentum = list(params), lr, momentum
        self.bufs = {empty}

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        with torch.no_grad():
{buffers}

class EMA:
    def __init__(self, model, decay=0.9):
        self.model, self.decay, self.shadow = model, decay, {{}}

    @torch.no_grad()
    def update(self):
        for name, p in self.model.named_parameters():
            if name not in self.shadow:
                self.shadow[name] = p.detach().clone()
            else:
                self.shadow[name].mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)


class Counter:
    def __init__(self, start):
        self.steps = start


class Holder:
    def __init__(self, **parts):
        self.__dict__.update(parts)


@dataclasses.dataclass
class Box:
    inner: object
'''

_DICT_BUFFERS = '''            for i, p in enumerate(self.params):
                if i not in self.bufs:
                    self.bufs[i] = p.grad.clone()
                else:
                    self.bufs[i].mul_(self.momentum).add_(p.grad)
                p.sub_(self.lr * self.bufs[i])
'''
_LIST_BUFFERS = '''            if not self.bufs:
                self.bufs = [p.grad.clone() for p in self.params]
            else:
                for buf, p in zip(self.bufs, self.params):
                    buf.mul_(self.momentum).add_(p.grad)
            for buf, p in zip(self.bufs, self.params):
                p.sub_(self.lr * buf)
'''

_MAKE_OPTIMIZER = {
    "sgd_momentum": "torch.optim.SGD(_model.parameters(), lr=0.05, momentum=0.9)",
    "adam": "torch.optim.Adam(_model.parameters(), lr=0.01)",
    "rmsprop": "torch.optim.RMSprop(_model.parameters(), lr=0.01, momentum=0.5)",
    "clone_state": "CloneMomentum(_model.parameters())",
    "dict_buffers": "BufferMomentum(_model.parameters())",
    "list_buffers": "BufferMomentum(_model.parameters())",
    "param_attribute": "AttributeMomentum(_model.parameters())",
    "zeros_adam_int": "ZerosAdam(_model.parameters())",
    "zeros_adam_tensor": "ZerosAdam(_model.parameters(), tensor_step=True)",
}

_SNAP_OPTIMIZER = {
    "sgd_momentum": "[_opt.state[p]['momentum_buffer'] for p in _model.parameters()]",
    "adam": "[(_opt.state[p]['exp_avg'], _opt.state[p]['exp_avg_sq'], _opt.state[p]['step']) "
            "for p in _model.parameters()]",
    "rmsprop": "[(_opt.state[p]['square_avg'], _opt.state[p]['momentum_buffer']) "
               "for p in _model.parameters()]",
    "clone_state": "[_opt.state[p]['buf'] for p in _model.parameters()]",
    "dict_buffers": "[_opt.bufs[i] for i in range(len(_opt.params))]",
    "list_buffers": "list(_opt.bufs)",
    "param_attribute": "[p.momentum_buffer for p in _model.parameters()]",
    "zeros_adam_int": "[(_opt.state[p]['exp_avg'], _opt.state[p]['exp_avg_sq'], "
                      "_opt.state[p]['step']) for p in _model.parameters()]",
}
_SNAP_OPTIMIZER["zeros_adam_tensor"] = _SNAP_OPTIMIZER["zeros_adam_int"]

_LOSSES = {"module": "torch.nn.CrossEntropyLoss()",
           "function": "torch.nn.functional.cross_entropy",
           "lambda": "lambda out, y: torch.nn.functional.mse_loss("
                     "out, torch.nn.functional.one_hot(y, 3).float())"}


@dataclass
class Spec:
    seed: int
    path: str
    detail: str             # the path's shape (nesting, holder kinds)
    optimizer: str
    parts: list             # the state the step reaches: model, opt, loss_fn, sched, ema, counter
    extras: dict            # norm, seen buffer, counter kind, loss kind
    source: str = field(repr=False)

    def __str__(self) -> str:
        return (f"seed {self.seed}: reached by {self.path} ({self.detail}), {self.optimizer}, "
                f"{self.extras}\n{self.source}")


def _holder_path(rng, names: list[str], top: str) -> tuple[str, dict, str]:
    """A nest 1-3 levels deep of lists / tuples / dicts (containers) around `names`: the
    expression building it, each name's access expression from `top`, and its description."""
    kinds = [str(rng.choice(["list", "tuple", "dict"])) for _ in range(int(rng.integers(1, 4)))]
    # innermost first: the parts themselves, in a dict or a sequence
    inner = kinds[-1]
    if inner == "dict":
        value = "{" + ", ".join(f"'{n}': _{n}" for n in names) + "}"
        access = {n: f"['{n}']" for n in names}
    else:
        items = ", ".join(f"_{n}" for n in names) + ("," if len(names) == 1 else "")
        value = f"[{items}]" if inner == "list" else f"({items})"
        access = {n: f"[{i}]" for i, n in enumerate(names)}
    for kind in reversed(kinds[:-1]):
        if kind == "dict":
            value, step = f"{{'run': {value}}}", "['run']"
        elif kind == "list":
            value, step = f"[None, {value}]", "[1]"
        else:
            value, step = f"({value},)", "[0]"
        access = {n: step + a for n, a in access.items()}
    return value, {n: top + a for n, a in access.items()}, " > ".join(kinds)


def _object_path(rng, names: list[str], top: str) -> tuple[str, dict, str]:
    """A trainer 1-3 objects deep (plain objects, dataclasses, namespaces) holding `names`."""
    kinds = [str(rng.choice(["plain", "dataclass", "namespace"]))
             for _ in range(int(rng.integers(1, 4)))]
    parts = ", ".join(f"{n}=_{n}" for n in names)
    inner = kinds[-1]
    value = (f"types.SimpleNamespace({parts})" if inner == "namespace" else f"Holder({parts})")
    kinds[-1] = "namespace" if inner == "namespace" else "plain"
    access = {n: f".{n}" for n in names}
    for kind in reversed(kinds[:-1]):
        if kind == "dataclass":
            value, step = f"Box({value})", ".inner"
        elif kind == "namespace":
            value, step = f"types.SimpleNamespace(trainer={value})", ".trainer"
        else:
            value, step = f"Holder(trainer={value})", ".trainer"
        access = {n: step + a for n, a in access.items()}
    return value, {n: top + a for n, a in access.items()}, " > ".join(kinds)


def _body(parts: list[str], at: dict) -> str:
    lines = [f"{at['opt']}.zero_grad()",
             f"loss = {at['loss_fn']}({at['model']}(x), y)",
             "loss.backward()",
             f"{at['opt']}.step()"]
    if "sched" in parts:
        lines.append(f"{at['sched']}.step()")
    if "ema" in parts:
        lines.append(f"{at['ema']}.update()")
    if "counter" in parts:
        lines.append(f"{at['counter']}.steps += 1")
    lines.append("return loss")
    return "".join(f"    {line}\n" for line in lines)


def generate(seed: int) -> Spec:
    rng = np.random.default_rng(seed)
    # the first seeds draw each path with each optimizer once
    if seed < len(PATHS) * len(OPTIMIZERS):
        path, optimizer = PATHS[seed % len(PATHS)], OPTIMIZERS[seed // len(PATHS)]
    else:
        path, optimizer = str(rng.choice(PATHS)), str(rng.choice(OPTIMIZERS))
    width = int(rng.integers(3, 9))
    norm = bool(rng.random() < 0.4)
    seen = bool(rng.random() < 0.4)
    counter = str(rng.choice(["none", "tensor", "int"], p=[0.5, 0.3, 0.2]))
    loss = str(rng.choice(list(_LOSSES)))
    parts = ["model", "opt", "loss_fn"]
    if optimizer not in PLAIN and rng.random() < 0.4:
        parts.append("sched")
    if rng.random() < 0.4:
        parts.append("ema")
    if counter != "none":
        parts.append("counter")
    extras = {"norm": norm, "seen": seen, "counter": counter, "loss": loss}

    source = "import dataclasses\nimport functools\nimport types\n" + _CLASSES.format(
        width=width, bias1=not norm,
        norm_init=f"        self.norm = torch.nn.BatchNorm1d({width})\n" if norm else "",
        norm_call="        h = self.norm(h)\n" if norm else "",
        seen_init="        self.register_buffer('seen', torch.zeros((), dtype=torch.long))\n"
        if seen else "",
        seen_update="        self.seen += x.shape[0]\n" if seen else "",
        kind="list" if optimizer == "list_buffers" else "dict",
        empty="[]" if optimizer == "list_buffers" else "{}",
        buffers=_LIST_BUFFERS if optimizer == "list_buffers" else _DICT_BUFFERS)
    source += "\n_model = Net()\n"
    source += f"_opt = {_MAKE_OPTIMIZER[optimizer]}\n"
    source += f"_loss_fn = {_LOSSES[loss]}\n"
    if "sched" in parts:
        source += "_sched = torch.optim.lr_scheduler.StepLR(_opt, 2, 0.5)\n"
    if "ema" in parts:
        source += "_ema = EMA(_model)\n"
    if counter != "none":
        source += f"_counter = Counter({'torch.zeros(())' if counter == 'tensor' else '0'})\n"

    names = ", ".join(parts)
    detail = ""
    if path == "global":
        at = {n: f"_{n}" for n in parts}
        source += "\ndef step(x, y):\n" + _body(parts, at)
        source += "TARGET, EXTRA = step, ()\n"
    elif path == "closure":
        at = {n: n for n in parts}
        source += (f"\ndef make_step({names}):\n    def step(x, y):\n" +
                   "".join("    " + line + "\n" for line in _body(parts, at).splitlines())
                   + "    return step\n")
        source += "TARGET, EXTRA = make_step(" + ", ".join(f"_{n}" for n in parts) + "), ()\n"
    elif path == "arguments":
        at = {n: n for n in parts}
        source += f"\ndef step(x, y, {names}):\n" + _body(parts, at)
        source += "TARGET, EXTRA = step, (" + ", ".join(f"_{n}" for n in parts) + ",)\n"
    elif path == "container":
        value, at, detail = _holder_path(rng, parts, "state")
        source += f"\ndef step(x, y, state):\n" + _body(parts, at)
        source += f"TARGET, EXTRA = step, ({value},)\n"
    elif path == "trainer":
        as_global = bool(rng.integers(2))
        value, at, detail = _object_path(rng, parts, "TRAINER" if as_global else "trainer")
        detail += ", a global" if as_global else ", an argument"
        if as_global:
            source += f"\nTRAINER = {value}\n\ndef step(x, y):\n" + _body(parts, at)
            source += "TARGET, EXTRA = step, ()\n"
        else:
            source += f"\ndef step(x, y, trainer):\n" + _body(parts, at)
            source += f"TARGET, EXTRA = step, ({value},)\n"
    elif path == "method":
        at = {n: f"self.{n}" for n in parts}
        source += (f"\nclass Trainer:\n    def __init__(self, {names}):\n" +
                   "".join(f"        self.{n} = {n}\n" for n in parts) +
                   "\n    def train_step(self, x, y):\n" +
                   "".join("    " + line + "\n" for line in _body(parts, at).splitlines()))
        source += ("TARGET, EXTRA = Trainer(" + ", ".join(f"_{n}" for n in parts) +
                   ").train_step, ()\n")
    elif path == "registry":
        value, at, detail = _holder_path(rng, parts, "REGISTRY['main']")
        detail = "dict > " + detail
        source += f"\nREGISTRY = {{'main': {value}}}\n\ndef step(x, y):\n" + _body(parts, at)
        source += "TARGET, EXTRA = step, ()\n"
    else:
        at = {n: n for n in parts}
        source += f"\ndef step(x, y, *, {names}):\n" + _body(parts, at)
        source += ("TARGET, EXTRA = functools.partial(step, " +
                   ", ".join(f"{n}=_{n}" for n in parts) + "), ()\n")

    snap = [f"'model': _model.state_dict()", f"'opt': {_SNAP_OPTIMIZER[optimizer]}"]
    if "ema" in parts:
        snap.append("'ema': dict(_ema.shadow)")
    if counter != "none":
        snap.append("'counter': _counter.steps")
    if "sched" in parts:
        snap.append("'lr': _opt.param_groups[0]['lr']")
    source += "\ndef SNAP():\n    return {" + ", ".join(snap) + "}\n"
    return Spec(seed, path, detail, optimizer, parts, extras, source)


def _flat(value, prefix="") -> dict:
    """A snapshot as {path: float64 array}."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items()
                for k, v in _flat(item, f"{prefix}.{key}").items()}
    if isinstance(value, (list, tuple)):
        return {k: v for i, item in enumerate(value)
                for k, v in _flat(item, f"{prefix}[{i}]").items()}
    if hasattr(value, "detach"):
        return {prefix: np.asarray(value.detach().numpy(), np.float64)}
    return {prefix: np.asarray(value, np.float64)}


def _run(spec: Spec, lib, compiled: bool):
    """(losses, snapshot, how each compiled call ran, warnings) of five steps."""
    import kiln
    ns = {"__name__": f"state_fuzz_{spec.seed}", "torch": lib}
    exec(compile(spec.source, "<state world>", "exec", dont_inherit=True), ns)
    rng = np.random.default_rng(spec.seed)
    with lib.no_grad():
        for p in ns["_model"].parameters():
            p.copy_(lib.tensor(rng.uniform(-0.5, 0.5, tuple(p.shape)).astype(np.float32)))
    fn = kiln.compile(ns["TARGET"]) if compiled else ns["TARGET"]
    losses, kinds, reasons = [], [], []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(STEPS):
            x = lib.tensor(rng.standard_normal((8, 4)).astype(np.float32))
            y = lib.tensor(rng.integers(0, 3, 8))
            before = _counts(fn) if compiled else None
            losses.append(fn(x, y, *ns["EXTRA"]).item())
            if compiled:
                kinds.append(_kind(fn, before))
    told = [str(w.message) for w in seen if "kiln.compile" in str(w.message)]
    if compiled:        # why it ran eagerly, as the entries say
        reasons = [e.eager_reason for e in fn.entries.values() if e.eager_reason]
    return losses, _flat(ns["SNAP"]()), kinds, reasons, told


def _counts(fn) -> tuple:
    """(entries, calls replayed, calls of eager entries) so far."""
    return (len(fn.entries),
            sum(e.calls for e in fn.entries.values() if e.program is not None),
            sum(e.calls for e in fn.entries.values() if e.program is None))


def _kind(fn, before: tuple) -> str:
    """How the latest call ran: a new eager entry or an eager entry's call is "eager", a
    program's call "replay", anything else a trace (one that made no entry traces again once
    the state it made exists)."""
    entries, replays, eager = _counts(fn)
    if entries > before[0] and list(fn.entries.values())[-1].program is None or eager > before[2]:
        return "eager"
    return "replay" if replays > before[1] else "trace"


@dataclass
class Outcome:
    problems: list
    kinds: list
    reasons: list
    warned: list


def check(spec: Spec) -> Outcome:
    import torch

    import kiln
    eager_losses, mine, _, _, _ = _run(spec, kiln, False)
    losses, twin, kinds, reasons, told = _run(spec, kiln, True)
    torch_losses, theirs, _, _, _ = _run(spec, torch, False)
    problems = []
    # an adaptive optimizer divides a gradient that is zero up to rounding (weights before a
    # batch norm, in the direction it removes) by its own size: eager and PyTorch differ there
    # by up to ~lr-sized steps (fuzz_steps' docstring), compiled and eager no more than that
    tolerance = 5e-2 if spec.optimizer in ADAPTIVE else 1e-4
    for i, (e, c, t) in enumerate(zip(eager_losses, losses, torch_losses)):
        if not np.isclose(c, e, rtol=1e-5, atol=1e-6):
            problems.append(f"step {i} loss: compiled {c} eager {e}")
        if not np.isclose(e, t, rtol=1e-4, atol=1e-5):
            problems.append(f"step {i} loss: eager {e} torch {t}")
    if mine.keys() != twin.keys() or mine.keys() != theirs.keys():
        problems.append(f"snapshots differ in keys: {sorted(set(mine) ^ set(twin) ^ set(theirs))}")
    for name in mine.keys() & twin.keys() & theirs.keys():
        apart = np.abs(twin[name] - mine[name]).max(initial=0)
        noise = np.abs(theirs[name] - mine[name]).max(initial=0)
        if apart > 2e-5 + 4 * noise:
            problems.append(f"{name}: compiled - eager {apart:.2e}, eager - torch {noise:.2e}")
        if noise > tolerance * (1 + np.abs(mine[name]).max(initial=0)):
            problems.append(f"{name}: eager - torch {noise:.2e}")
    if problems and "eager" in kinds and not told:
        problems.append("a call ran eagerly without a warning")
    if problems and not told:
        problems.append("(no warning: a stale or wrong compiled answer)")
    return Outcome(problems, kinds, reasons, told)


def _reason(reason: str) -> str:
    """An eager reason without the path that names the place."""
    if "changes Python state" in reason:
        return ("changes Python state: an int step in an optimizer's state"
                if "['step']" in reason else "changes Python state: an int counter on an object"
                if ".steps" in reason else reason[:200])
    return reason[:200]


def sweep(first: int, count: int) -> int:
    tally, reasons = collections.Counter(), collections.Counter()
    failing = 0
    for seed in range(first, first + count):
        spec = generate(seed)
        try:
            outcome = check(spec)
        except Exception as e:          # noqa: BLE001 - a sweep reports and goes on
            outcome = Outcome([f"{type(e).__name__}: {e}"], [], [], [])
        if outcome.problems:
            failing += 1
            print(f"FAILING {spec}\n  " + "\n  ".join(outcome.problems), flush=True)
        ran = "eager" if "eager" in outcome.kinds else \
            "replayed" if "replay" in outcome.kinds else "traced only"
        tally[ran] += 1
        if ran == "traced only":
            print(f"traced only: seed {seed}, {spec.path}, {spec.optimizer}, {spec.parts}, "
                  f"{outcome.kinds}", flush=True)
        for r in dict.fromkeys(outcome.reasons):
            reasons[_reason(r)] += 1
    print(f"{count} seeds, {failing} failing; steps: {dict(tally)}")
    print("eager reasons:")
    for r, n in reasons.most_common(20):
        print(f"  {n:4d}  {r}")
    return failing


if __name__ == "__main__":
    sys.exit(1 if sweep(int(sys.argv[1]), int(sys.argv[2])) else 0)
