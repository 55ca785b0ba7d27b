"""kiln.utils.flop_counter.FlopCounterMode against torch.utils.flop_counter: the same models
built in both, forward and forward+backward; the totals and every module's total must be equal
(FLOPs are counts, so exactly), and the table must lay out as torch's."""

import contextlib
import threading

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode as TorchFlopCounterMode

import kiln
from kiln.ir.ops import P
from kiln.utils.flop_counter import FlopCounterMode, register_flop_formula


def _mlp(lib):
    nn = lib.nn

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(5, 30), nn.ReLU(), nn.Linear(30, 3)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))
    return MLP(), lambda: lib.randn(4, 5)


def _cnn(lib):
    nn = lib.nn

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(8, 6, (3, 2), padding=(1, 0), dilation=(1, 2), bias=False), nn.ReLU())
            self.head = nn.Linear(6 * 6 * 4, 10)

        def forward(self, x):
            return self.head(self.features(x).flatten(1))
    return CNN(), lambda: lib.randn(2, 3, 11, 11)


def _transformer(lib):
    nn, F = lib.nn, lib.nn.functional

    class Attention(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.heads = heads
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

        def forward(self, x):
            b, t, c = x.shape
            q, k, v = self.qkv(x).split(c, dim=-1)
            q, k, v = (z.reshape(b, t, self.heads, c // self.heads).transpose(1, 2)
                       for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.proj(y.transpose(1, 2).reshape(b, t, c))

    class Block(nn.Module):
        def __init__(self, dim=16, heads=4):
            super().__init__()
            self.ln1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
            self.ln2 = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))
    return Block(), lambda: lib.randn(2, 7, 16)


def _batched(lib):
    nn = lib.nn

    class Batched(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(lib.randn(3, 5, 4))
            self.u = nn.Parameter(lib.randn(3, 4, 2))

        def forward(self, x):
            return lib.einsum("bij,bjk->bik", lib.bmm(x, self.w), self.u)
    return Batched(), lambda: lib.randn(3, 6, 5)


MODELS = {"mlp": _mlp, "cnn": _cnn, "transformer": _transformer, "bmm": _batched}


def _count(lib, counter_cls, build, backward: bool, input_grad: bool):
    lib.manual_seed(0)
    model, make_input = build(lib)
    x = make_input().requires_grad_(input_grad)
    # kiln's attention is the math one; torch's CPU fused attention kernel has no FLOP formula
    # in torch 2.13 (it counts 0), its math backend counts the products it runs
    math_attention = sdpa_kernel(SDPBackend.MATH) if lib is torch else contextlib.nullcontext()
    with counter_cls(display=False) as counter, math_attention:
        out = model(x)
        if backward:
            out.sum().backward()
    return counter


def _module_totals(counter) -> dict:
    return {mod: sum(ops.values()) for mod, ops in counter.get_flop_counts().items()}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("backward,input_grad", [(False, False), (True, False), (True, True)])
def test_counts_equal_torch(name, backward, input_grad):
    theirs = _count(torch, TorchFlopCounterMode, MODELS[name], backward,
                    input_grad)
    ours = _count(kiln, FlopCounterMode, MODELS[name], backward, input_grad)
    assert ours.get_total_flops() == theirs.get_total_flops() > 0
    assert _module_totals(ours) == _module_totals(theirs)


def _cells(table: str) -> list:
    """Rows of a table as (stripped) cells, the separator row left out; op rows ("- op")
    dropped, as kiln's op names differ from aten's."""
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().split("  ") if c.strip()]
        if set(line.strip()) <= {"-", " "} or cells[0].startswith("- "):
            continue
        rows.append(cells)
    return rows


def _first_column(table: str) -> list:
    """The first cell of each row below the rule, leading spaces kept."""
    lines = table.splitlines()
    width = len(lines[1].split(" ")[0])
    return [line[:width].rstrip() for line in lines[2:]]


@pytest.mark.parametrize("depth", [1, 2, None])
def test_table_layout_matches_torch(depth):
    pytest.importorskip("tabulate")           # torch's get_table needs it
    theirs = _count(torch, TorchFlopCounterMode, _transformer, True, True)
    ours = _count(kiln, FlopCounterMode, _transformer, True, True)
    ours_table, theirs_table = ours.get_table(depth), theirs.get_table(depth)
    assert _cells(ours_table) == _cells(theirs_table)
    lines = ours_table.splitlines()
    assert lines[0].split() == ["Module", "FLOP", "%", "Total"]
    assert set(lines[1]) == {"-", " "}
    # a module's row is indented one space per level below the root, its ops' rows one more
    # and marked " - ", as torch lays it out (with tabulate keeping leading spaces)
    indent = None
    for first in _first_column(ours_table):
        name = first.lstrip()
        if name.startswith("- "):
            assert first == " " * indent + " - kiln.matmul"
        else:
            indent = len(first) - len(name)
            assert indent == name.count(".")
    widths = [len(part) for part in lines[1].split("  ")]
    assert all(len(line) <= sum(widths) + 2 * (len(widths) - 1) for line in lines)
    assert len(lines) == 2 + 2 * len([m for m in ours.get_flop_counts()
                                      if m != "Global" and m.count(".") < (depth or 2)])


def test_table_global_row_when_flops_ran_outside_modules():
    pytest.importorskip("tabulate")
    tables = []
    for lib, counter_cls in ((torch, TorchFlopCounterMode), (kiln, FlopCounterMode)):
        model, make_input = _mlp(lib)
        with counter_cls(display=False) as counter:
            y = model(make_input())
            y @ y.t()
        tables.append(counter.get_table())
    theirs, ours = tables
    assert _cells(ours) == _cells(theirs)
    assert _first_column(ours) == [
        "Global", " - kiln.matmul", " MLP", "  - kiln.matmul", "  MLP.fc1", "   - kiln.matmul",
        "  MLP.fc2", "   - kiln.matmul"]


def test_display_prints_table_and_empty_table(capsys):
    model, make_input = _mlp(kiln)
    with FlopCounterMode() as counter:
        model(make_input())
    assert capsys.readouterr().out.strip() == counter.get_table().strip()
    assert counter.get_total_flops() == 2 * 4 * 5 * 30 + 2 * 4 * 30 * 3
    with FlopCounterMode(display=False) as empty:
        kiln.randn(3) + 1
    assert empty.get_total_flops() == 0
    assert _cells(empty.get_table()) == [["Module", "FLOP", "% Total"], ["Global", "0", "0%"]]


def test_functional_ops_outside_modules_and_op_keys():
    a, b = kiln.randn(6, 7, requires_grad=True), kiln.randn(7, 2, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        (a @ b).sum().backward()
    # the forward product and the two gradient products, 2*6*7*2 each
    assert counter.get_flop_counts() == {"Global": {"kiln.matmul": 3 * 2 * 6 * 7 * 2}}
    x = kiln.randn(1, 2, 5, 5, requires_grad=True)
    w = kiln.randn(4, 2, 3, 3, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        kiln.nn.functional.conv2d(x, w).sum().backward()
    one = 2 * 1 * 4 * 2 * 9 * 3 * 3        # N * O * C * kh*kw * oh*ow, twice
    assert counter.get_flop_counts()["Global"] == {
        "kiln.unfold_matmul": one, "kiln.matmul_fold": one, "kiln.matmul_unfold": one}


def test_custom_mapping_and_register_flop_formula():
    x = kiln.randn(4, 3)
    with FlopCounterMode(display=False, custom_mapping={
            "exp": lambda x_shape, out_shape=None: x_shape[0] * x_shape[1]}) as counter:
        kiln.exp(x)
    assert counter.get_flop_counts() == {"Global": {"kiln.exp": 12}}
    with pytest.raises(ValueError, match="kiln primitive"):
        FlopCounterMode(custom_mapping={"linear": lambda *a, **k: 0})
    with pytest.raises(RuntimeError, match="duplicate registrations for kiln.matmul"):
        register_flop_formula("kiln.matmul")(lambda *a, **k: 0)


def test_dispatch_restored_and_profiler_nests_either_way():
    original = P.dispatch
    a = kiln.randn(3, 4)
    for outer_is_counter in (True, False):
        counter = FlopCounterMode(display=False)
        prof = kiln.profiler.profile()
        outer, inner = (counter, prof) if outer_is_counter else (prof, counter)
        with outer:
            with inner:
                a @ a.t()
        assert P.dispatch is original
        assert counter.get_total_flops() == 2 * 3 * 4 * 3
        assert any(e.name == "kiln::matmul" for e in prof.events())
    # ended in the other order than begun: each still takes itself out of the chain
    counter, prof = FlopCounterMode(display=False), kiln.profiler.profile()
    counter.__enter__()
    prof.__enter__()
    counter.__exit__(None, None, None)
    prof.__exit__(None, None, None)
    assert P.dispatch is original
    prof.__enter__()
    counter.__enter__()
    prof.__exit__(None, None, None)
    a @ a.t()                   # the counter still counts after the profiler below it ended
    counter.__exit__(None, None, None)
    assert P.dispatch is original and counter.get_total_flops() == 2 * 3 * 4 * 3
    with kiln.profiler.profile() as again:
        a @ a.t()
    assert P.dispatch is original and any(e.name == "kiln::matmul" for e in again.events())


def test_compiled_function_is_not_counted():
    w = kiln.randn(4, 4)

    @kiln.compile
    def step(x):
        return x @ w

    x = kiln.randn(2, 4)
    with FlopCounterMode(display=False) as counter:
        step(x)                 # the trace
        step(x)                 # a replay
    assert counter.get_total_flops() == 0
    with FlopCounterMode(display=False) as counter:
        x @ w                   # eager
    assert counter.get_total_flops() == 2 * 2 * 4 * 4


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_meta_forward_counts_as_the_real_one(name):
    real = _count(kiln, FlopCounterMode, MODELS[name], False, False)
    kiln.manual_seed(0)
    model, make_input = MODELS[name](kiln)
    model, x = model.to("meta"), make_input().to("meta")
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert counter.get_flop_counts() == real.get_flop_counts()
    assert counter.get_total_flops() > 0


def test_counts_only_the_entering_thread():
    a = kiln.randn(8, 8)
    with FlopCounterMode(display=False) as counter:
        worker = threading.Thread(target=lambda: a @ a)
        worker.start()
        worker.join()
        a @ a[:, :2]
    assert counter.get_total_flops() == 2 * 8 * 8 * 2
