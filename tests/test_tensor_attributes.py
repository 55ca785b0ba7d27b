"""A user's own attributes on tensors and parameters (`p.no_weight_decay = True`), eager: which
operations carry them, checked against PyTorch's behaviour computed in each test."""

from __future__ import annotations

import copy
import io
import json
import pickle
import warnings

import numpy as np
import pytest
import torch

import kiln
from tests.test_serialization import _craft


def _own(t) -> dict:
    return dict(vars(t))


def test_set_get_delete_like_torch():
    seen = {}
    for lib in (torch, kiln):
        t = lib.randn(2, 3)
        t.meta = {"a": 1}
        p = lib.nn.Parameter(lib.randn(2))
        p.no_weight_decay = True
        row = [_own(t), t.__dict__ == {"meta": {"a": 1}}, hasattr(t, "meta"),
               getattr(t, "missing", 7), _own(p), p.no_weight_decay]
        del t.meta
        row += [_own(t), hasattr(t, "meta")]
        with pytest.raises(AttributeError) as missing:
            t.meta
        with pytest.raises(AttributeError) as deleted:
            del t.meta
        t.__dict__["z"] = 3
        row += [t.z, type(missing.value), type(deleted.value)]
        t.__dict__ = {"q": 1}           # a new dict of attributes, as on any Python object
        row += [t.q, _own(t)]
        seen[lib.__name__] = row
    assert seen["kiln"] == seen["torch"]


def test_missing_attribute_names_the_class():
    p = kiln.nn.Parameter(kiln.randn(2))
    with pytest.raises(AttributeError, match="'Parameter' object has no attribute 'foo'"):
        p.foo
    with pytest.raises(AttributeError, match="'Tensor' object has no attribute 'foo'"):
        kiln.randn(2).foo


def test_a_property_is_not_shadowed():
    for lib in (torch, kiln):
        with pytest.raises(AttributeError):
            lib.zeros(2).shape = (1,)


def _carried(lib) -> dict:
    """For each operation, whether the attribute `tag` (and its value) reaches the result."""
    t = lib.randn(2, 3)
    t.tag = [1]
    p = lib.nn.Parameter(lib.randn(2, 3))
    p.tag = [2]
    out = {}
    for name, fn in {
            "detach": lambda x: x.detach(), "clone": lambda x: x.clone(),
            "view": lambda x: x.view(6), "transpose": lambda x: x.t(),
            "to other dtype": lambda x: x.to(lib.float64), "data": lambda x: x.data,
            "add": lambda x: x + 1, "deepcopy": copy.deepcopy, "copy": copy.copy,
            "requires_grad_": lambda x: x.requires_grad_(x.requires_grad),
            "to same dtype": lambda x: x.to(lib.float32),
            "add_": lambda x: x.detach().add_(1) if x.requires_grad else x.add_(1)}.items():
        for which, x in (("tensor", t), ("parameter", p)):
            r = fn(x)
            value = vars(r).get("tag")
            out[(name, which)] = (value, value is x.tag if value is not None else None,
                                  r is x)
    return out


def test_which_operations_carry_attributes():
    assert _carried(kiln) == _carried(torch)


def test_deepcopy_copies_a_tensors_attributes_deeply():
    seen = {}
    for lib in (torch, kiln):
        t = lib.ones(2)
        t.buf = lib.zeros(2)
        t.cfg = {"lr": [0.1]}
        d = copy.deepcopy(t)
        seen[lib.__name__] = (sorted(vars(d)), d.buf is t.buf, d.cfg == t.cfg,
                              d.cfg is t.cfg, d.buf.tolist())
    assert seen["kiln"] == seen["torch"]


def _module_story(lib) -> list:
    """Attributes on a module's parameters and buffers through deepcopy, dtype and device
    moves under each `torch.__future__` setting, state_dict and load_state_dict."""
    lib.manual_seed(0)
    m = lib.nn.Linear(2, 3)
    m.register_buffer("b", lib.zeros(2))
    m.weight.tag = "w"
    m.b.tag = "b"
    story = [_own(copy.deepcopy(m).weight), _own(copy.deepcopy(m.weight))]
    m.double()
    story += [_own(m.weight), _own(m.b)]
    m.b.tag = "b"
    m.to(lib.float64)       # no change: the buffer is kept
    story += [_own(m.weight), _own(m.b)]
    m.float()
    m.cpu()
    story += [_own(m.weight)]
    lib.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        m.double()
        story += [_own(m.weight)]
    finally:
        lib.__future__.set_overwrite_module_params_on_conversion(False)
    m.weight.tag = "w"
    lib.__future__.set_swap_module_params_on_conversion(True)
    try:
        m.float()
        story += [_own(m.weight)]
    finally:
        lib.__future__.set_swap_module_params_on_conversion(False)
    m.weight.tag = "w"
    sd = m.state_dict()
    story += [_own(sd["weight"]), _own(m.state_dict(keep_vars=True)["weight"])]
    other = lib.nn.Linear(2, 3)
    other.weight.kept = 5
    other.load_state_dict({k: v for k, v in sd.items() if k != "b"})
    story += [_own(other.weight)]
    other.load_state_dict({k: v for k, v in sd.items() if k != "b"}, assign=True)
    story += [_own(other.weight)]
    return story


def test_module_conversions_state_dict_and_load_like_torch():
    assert _module_story(kiln) == _module_story(torch)


def test_swap_tensors_swaps_attributes():
    seen = {}
    for lib in (torch, kiln):
        a, b = lib.zeros(2), lib.ones(2)
        a.tag = "a"
        lib.utils.swap_tensors(a, b)
        seen[lib.__name__] = (_own(a), _own(b), a.tolist())
    assert seen["kiln"] == seen["torch"]


def test_pickle_keeps_attributes():
    seen = {}
    for lib in (torch, kiln):
        t = lib.ones(2)
        t.tag = {"a": 1}
        p = lib.nn.Parameter(lib.ones(2))
        p.no_decay = True
        seen[lib.__name__] = (_own(pickle.loads(pickle.dumps(t))),
                              _own(pickle.loads(pickle.dumps(p))))
    assert seen["kiln"] == seen["torch"]


def _save_load(lib, obj, **kwargs):
    buf = io.BytesIO()
    lib.save(obj, buf)
    buf.seek(0)
    return lib.load(buf, **kwargs)


def test_save_keeps_plain_data_attributes_as_torch():
    """kiln.save keeps attributes that are plain data, as torch.save does (its format holds
    no code: other values are left out with a warning, see the next test)."""
    seen = {}
    for lib in (torch, kiln):
        t = lib.randn(2)
        t.meta = {"name": "emb", "sizes": [1, 2.5, None], "on": True}
        p = lib.nn.Parameter(lib.randn(2))
        p.no_weight_decay = True
        loaded = _save_load(lib, {"t": t, "again": t, "p": p})
        m = lib.nn.Linear(2, 2)
        m.weight.group = "decay"
        whole = _save_load(lib, m, weights_only=False)
        seen[lib.__name__] = (_own(loaded["t"]), loaded["t"] is loaded["again"],
                              _own(loaded["p"]), type(loaded["p"]).__name__,
                              _own(whole.weight), _own(whole.bias))
    assert seen["kiln"] == seen["torch"]


def test_save_leaves_out_what_is_not_plain_data_with_a_warning():
    t = kiln.ones(2)
    t.ok = 1
    t.buf = kiln.zeros(2)
    t.fn = lambda: 0
    t.pair = (1, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = _save_load(kiln, [t])[0]
    assert _own(loaded) == {"ok": 1}
    (w,) = caught
    assert "buf (Tensor)" in str(w.message) and "fn (function)" in str(w.message) and \
        "pair (tuple)" in str(w.message) and w.filename == __file__
    np.testing.assert_array_equal(loaded.numpy(), t.numpy())
    # a tensor without attributes saves as before: no key in its node
    buf = io.BytesIO()
    kiln.save(kiln.ones(1), buf)
    assert b"attributes" not in buf.getvalue()


def test_load_refuses_malformed_attributes():
    header = {"tensor": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    data = np.ones(2, np.float32).tobytes()
    for attributes, message in (({"add": 1}, "named like the tensor's own"),
                                ({"requires_grad": 1}, "named like the tensor's own"),
                                ([1], "not a dict by name")):
        structure = json.dumps([{"tensor": "tensor", "attributes": attributes}])
        raw = _craft(header, data, {"kiln.structure": structure})
        with pytest.raises(kiln.serialization.CheckpointError, match=message):
            kiln.load(io.BytesIO(raw))
    raw = _craft(header, data, {"kiln.structure": json.dumps(
        [{"tensor": "tensor", "attributes": {"tag": [1, {"a": None}]}}])})
    assert _own(kiln.load(io.BytesIO(raw))) == {"tag": [1, {"a": None}]}


def test_kiln_load_reads_torch_files_with_attributes():
    """torch.save pickles a tensor's attributes (`_rebuild_from_type_v2`, a parameter's
    `_rebuild_parameter_with_state`); kiln.load sets them as data, running no code."""
    t = torch.arange(3.0)
    t.meta = {"name": "emb", "sizes": [1, 2]}
    p = torch.nn.Parameter(torch.ones(2))
    p.no_weight_decay = True
    sd = torch.nn.Linear(2, 2).state_dict()
    buf = io.BytesIO()
    torch.save({"t": t, "p": p, "sd": sd}, buf)
    buf.seek(0)
    loaded = kiln.load(buf)
    assert _own(loaded["t"]) == _own(t) and loaded["t"].tolist() == t.tolist()
    assert type(loaded["p"]) is kiln.nn.Parameter and _own(loaded["p"]) == _own(p)
    assert _own(loaded["sd"]["weight"]) == {}
    p.add = 1       # a name of the tensor's own: refused
    buf = io.BytesIO()
    torch.save(p, buf)
    buf.seek(0)
    with pytest.raises(kiln.serialization.CheckpointError, match="named like the tensor's own"):
        kiln.load(buf)


def test_a_subclass_with_slots_keeps_working():
    class Tagged(kiln.Tensor):
        __slots__ = ("scale",)

    t = kiln.zeros(2).as_subclass(Tagged)
    t.scale = 2.0
    t.other = 1
    assert t.scale == 2.0 and _own(t) == {"other": 1}
    assert isinstance(t + 1, kiln.Tensor)


def test_subclass_parameter_marking():
    class Mine(kiln.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            return super().__torch_function__(func, types, args, kwargs or {})

    p = kiln.nn.Parameter(kiln.zeros(2).as_subclass(Mine))
    assert isinstance(p, kiln.nn.Parameter) and type(p) is Mine
