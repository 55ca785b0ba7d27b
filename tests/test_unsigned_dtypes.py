"""kiln.uint16, uint32 and uint64 against PyTorch 2.13, which supports them only in part.

Every case runs the same code on torch and on kiln: where torch computes, kiln's values, shape
and dtype must agree; where torch refuses (NotImplementedError: no CPU kernel for the type;
RuntimeError: no promotion with a non-floating type), kiln must refuse with the same exception
type, naming the op and the type.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

import kiln
from tests.parity import _flat, assert_close

UNSIGNED = ["uint16", "uint32", "uint64"]
TORCH_NAME = {"uint16": "UInt16", "uint32": "UInt32", "uint64": "UInt64"}


def _both(name: str):
    return getattr(torch, name), getattr(kiln, name)


def _all_dtype_names() -> list[str]:
    names = ["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64",
             "complex64", "complex128"] + UNSIGNED
    if kiln.ir.dtypes.HAS_BFLOAT16:
        names.append("bfloat16")
    return names


@pytest.mark.parametrize("a", _all_dtype_names())
@pytest.mark.parametrize("b", _all_dtype_names())
def test_promote_types_matches_torch_for_every_pair(a, b):
    (ta, ka), (tb, kb) = _both(a), _both(b)
    try:
        expected = torch.promote_types(ta, tb)
    except RuntimeError as e:
        with pytest.raises(RuntimeError) as got:
            kiln.promote_types(ka, kb)
        assert str(got.value) == str(e)
        return
    assert kiln.promote_types(ka, kb).name == str(expected).replace("torch.", "")


def _data(lib, name: str):
    """A (2, 3) tensor of the dtype with a value past the signed type's range where it fits."""
    big = {"uint16": 40000, "uint32": 3_000_000_000, "uint64": 2**63 + 5}[name]
    return lib.tensor([[1, 2, 3], [4, big, 6]], dtype=getattr(lib, name))


# (what, fn(lib, x, dtype)): the calls a script makes on such a tensor
CASES = [
    ("mul", lambda lib, x, d: x * x),
    ("mul_number", lambda lib, x, d: x * 3),
    ("mul_float", lambda lib, x, d: x * 1.5),
    ("div", lambda lib, x, d: x / x),
    ("div_number", lambda lib, x, d: x / 2),
    ("add_float_tensor", lambda lib, x, d: x + lib.ones(2, 3)),
    ("add_float64_tensor", lambda lib, x, d: x + lib.ones(3, dtype=lib.float64)),
    ("sum", lambda lib, x, d: x.sum()),
    ("sum_dim", lambda lib, x, d: x.sum(0)),
    ("sum_float", lambda lib, x, d: x.sum(dtype=lib.float32)),
    ("prod", lambda lib, x, d: x[0].prod()),
    ("cumsum", lambda lib, x, d: x.cumsum(1)),
    ("eq", lambda lib, x, d: x == x),
    ("eq_number", lambda lib, x, d: x == 2),
    ("ne", lambda lib, x, d: x != x[0]),
    ("bitwise_and", lambda lib, x, d: x & x),
    ("bitwise_or", lambda lib, x, d: x | x),
    ("bitwise_xor", lambda lib, x, d: x ^ x),
    ("sort", lambda lib, x, d: x.sort(1)),
    ("sort_descending", lambda lib, x, d: x.sort(0, descending=True)),
    ("where", lambda lib, x, d: lib.where(x == 2, x, x * 2)),
    ("cat", lambda lib, x, d: lib.cat([x, x])),
    ("stack", lambda lib, x, d: lib.stack([x, x], 1)),
    ("index", lambda lib, x, d: x[1, 1:]),
    ("mask_index", lambda lib, x, d: x[lib.tensor([[True, False, True], [False, True, True]])]),
    ("transpose_contiguous", lambda lib, x, d: x.t().contiguous()),
    ("reshape", lambda lib, x, d: x.reshape(3, 2)),
    ("unsqueeze_expand", lambda lib, x, d: x.unsqueeze(0).expand(2, 2, 3)),
    ("repeat", lambda lib, x, d: x.repeat(2, 1)),
    ("pad", lambda lib, x, d: lib.nn.functional.pad(x, (1, 2))),
    ("roll", lambda lib, x, d: x.roll(1, 1)),
    ("any_all", lambda lib, x, d: (x.any(), x.all(1))),
    ("clone", lambda lib, x, d: x.clone()),
    ("to_float", lambda lib, x, d: x.float()),
    ("to_int64", lambda lib, x, d: x.long()),
    ("to_uint8", lambda lib, x, d: x.to(lib.uint8)),
    ("sqrt", lambda lib, x, d: x.sqrt()),
    ("mul_", lambda lib, x, d: x.clone().mul_(2)),
    ("fill_", lambda lib, x, d: x.clone().fill_(7)),
    ("zero_", lambda lib, x, d: x.clone().zero_()),
    ("copy_", lambda lib, x, d: x.clone().copy_(lib.ones(2, 3))),
    ("setitem_number", lambda lib, x, d: _set(x.clone(), (0, 1), 9)),
    ("zeros_like", lambda lib, x, d: lib.zeros_like(x)),
    ("full", lambda lib, x, d: lib.full((2,), 5, dtype=d)),
    # refused by PyTorch 2.13: no CPU kernel for these types
    ("add", lambda lib, x, d: x + x),
    ("add_number", lambda lib, x, d: x + 1),
    ("sub", lambda lib, x, d: x - 1),
    ("add_", lambda lib, x, d: x.clone().add_(1)),
    ("neg", lambda lib, x, d: -x),
    ("abs", lambda lib, x, d: x.abs()),
    ("lt", lambda lib, x, d: x < 2),
    ("max", lambda lib, x, d: x.max()),
    ("max_dim", lambda lib, x, d: x.max(1)),
    ("min", lambda lib, x, d: x.min()),
    ("maximum", lambda lib, x, d: lib.maximum(x, x)),
    ("argmax", lambda lib, x, d: x.argmax()),
    ("floor_divide", lambda lib, x, d: x // 2),
    ("remainder", lambda lib, x, d: x % 2),
    ("pow", lambda lib, x, d: x ** 2),
    ("matmul", lambda lib, x, d: x @ x.t()),
    ("bitwise_not", lambda lib, x, d: ~x),
    ("shift", lambda lib, x, d: x << 1),
    ("clamp", lambda lib, x, d: x.clamp(0, 3)),
    ("sign", lambda lib, x, d: x.sign()),
    ("flip_rows", lambda lib, x, d: x.flip(0)),
    ("flip_last_dim", lambda lib, x, d: x.flip(1)),
    ("flip_not_contiguous", lambda lib, x, d: x.t().flip(0)),
    ("gather", lambda lib, x, d: x.gather(1, lib.tensor([[0], [1]]))),
    ("index_select", lambda lib, x, d: x.index_select(1, lib.tensor([0, 2]))),
    ("index_select_1d", lambda lib, x, d: x[0].index_select(0, lib.tensor([0, 2]))),
    ("list_index", lambda lib, x, d: x[:, [0, 2]]),
    ("masked_fill", lambda lib, x, d: x.masked_fill(x == 2, 0)),
    ("masked_select", lambda lib, x, d: x.masked_select(x == 2)),
    ("scatter", lambda lib, x, d: x.scatter(1, lib.tensor([[0], [1]]), x)),
    ("topk", lambda lib, x, d: x.topk(1)),
    ("nonzero", lambda lib, x, d: x.nonzero()),
    ("count_nonzero", lambda lib, x, d: x.count_nonzero()),
    ("logical_not", lambda lib, x, d: x.logical_not()),
    ("logical_and", lambda lib, x, d: lib.logical_and(x, x)),
    ("tril", lambda lib, x, d: x.tril()),
    ("isin", lambda lib, x, d: lib.isin(x, x)),
    ("setitem_index_tensor", lambda lib, x, d: _set(x.clone(), lib.tensor([0]), 5)),
    ("setitem_mask", lambda lib, x, d: _set(x.clone(), x == 2, 5)),
    ("arange", lambda lib, x, d: lib.arange(3, dtype=d)),
    ("linspace", lambda lib, x, d: lib.linspace(0, 4, 3, dtype=d)),
    ("eye", lambda lib, x, d: lib.eye(2, dtype=d)),
    # refused by PyTorch's promotion: a limited type meets a non-floating one
    ("mul_int64_tensor", lambda lib, x, d: x * lib.tensor([1, 2, 3])),
    ("eq_int64_tensor", lambda lib, x, d: x == lib.tensor([1, 2, 3])),
    ("mul_bool_tensor", lambda lib, x, d: x * lib.tensor([True, False, True])),
    # refused by PyTorch: a condition that is not a bool (or uint8) tensor
    ("where_condition", lambda lib, x, d: lib.where(x, x, x)),
]


def _set(x, key, value):
    x[key] = value
    return x


@pytest.mark.parametrize("name", UNSIGNED)
@pytest.mark.parametrize("what,fn", CASES, ids=[c[0] for c in CASES])
def test_op_matches_torch_or_is_refused_as_torch_refuses(name, what, fn):
    (td, kd) = _both(name)
    try:
        expected = fn(torch, _data(torch, name), td)
    except (NotImplementedError, RuntimeError) as e:
        with pytest.raises(type(e)) as got:
            fn(kiln, _data(kiln, name), kd)
        if isinstance(e, NotImplementedError):
            assert f"not implemented for '{TORCH_NAME[name]}'" in str(got.value)
        else:
            assert str(e) in str(got.value)
        return
    got = _flat(fn(kiln, _data(kiln, name), kd))
    assert len(got) == len(_flat(expected))
    for k, t in zip(got, _flat(expected)):
        assert_close(k, t, 0, 1e-6, what)    # (floating results: one float32 rounding)


@pytest.mark.parametrize("name", UNSIGNED)
def test_refusal_names_the_op_the_type_and_what_to_do(name):
    x = _data(kiln, name)
    with pytest.raises(NotImplementedError) as got:
        x + x
    message = str(got.value)
    assert message.startswith("add: ")
    assert TORCH_NAME[name] in message and "x.long()" in message


@pytest.mark.parametrize("name", UNSIGNED)
def test_dtype_facts_match_torch(name):
    td, kd = _both(name)
    assert (kd.is_signed, kd.itemsize, kd.is_floating_point, kd.is_complex) == \
        (td.is_signed, td.itemsize, td.is_floating_point, td.is_complex)
    ti, ki = torch.iinfo(td), kiln.iinfo(kd)
    assert (ki.bits, ki.min, ki.max) == (ti.bits, ti.min, ti.max)
    assert repr(kd) == repr(td).replace("torch.", "kiln.")


@pytest.mark.parametrize("name", UNSIGNED)
def test_creation_printing_and_conversion_match_torch(name):
    td, kd = _both(name)
    t, k = _data(torch, name), _data(kiln, name)
    assert repr(k) == repr(t).replace("torch.", "kiln.")
    assert repr(kiln.tensor([], dtype=kd)) == repr(torch.tensor([], dtype=td)).replace(
        "torch.", "kiln.")
    assert repr(kiln.tensor(3, dtype=kd)) == repr(torch.tensor(3, dtype=td)).replace(
        "torch.", "kiln.")
    assert k.type() == t.type().replace("torch.", "kiln.")
    assert k.tolist() == t.tolist() and k[1, 1].item() == t[1, 1].item()
    assert k.element_size() == t.element_size()
    assert k.numpy().dtype == t.numpy().dtype
    array = t.numpy()
    for make in ("from_numpy", "as_tensor", "tensor"):
        assert_close(getattr(kiln, make)(array.copy()), getattr(torch, make)(array.copy()),
                     0, 0, make)
    for make in ("zeros", "ones", "empty"):
        kt, tt = getattr(kiln, make)(2, 3, dtype=kd), getattr(torch, make)(2, 3, dtype=td)
        assert (kt.dtype.name, tuple(kt.shape)) == (name, tuple(tt.shape))
    floats = [3.9, 1.2, 0.0, 200.5]
    assert_close(kiln.tensor(floats).to(kd), torch.tensor(floats).to(td), 0, 0, "from float")
    assert_close(kiln.tensor([-1, 5]).to(kd), torch.tensor([-1, 5]).to(td), 0, 0, "wraps")
    gen_t, gen_k = torch.Generator().manual_seed(3), kiln.Generator().manual_seed(3)
    assert_close(kiln.randint(0, 50, (5,), generator=gen_k, dtype=kd),
                 torch.randint(0, 50, (5,), generator=gen_t, dtype=td), 0, 0, "randint")


@pytest.mark.parametrize("name", UNSIGNED)
def test_gradients_are_refused_as_in_torch(name):
    td, kd = _both(name)
    with pytest.raises(RuntimeError):
        torch.zeros(2, dtype=td).requires_grad_()
    with pytest.raises(RuntimeError, match="floating point"):
        kiln.zeros(2, dtype=kd).requires_grad_()


@pytest.mark.parametrize("name", UNSIGNED)
def test_save_load_round_trip_keeps_dtype_and_values(name):
    k = _data(kiln, name)
    buffer = io.BytesIO()
    kiln.save({"x": k, "rows": [k[0]]}, buffer)
    buffer.seek(0)
    loaded = kiln.load(buffer)
    assert_close(loaded["x"], _data(torch, name), 0, 0, "x")
    assert_close(loaded["rows"][0], _data(torch, name)[0], 0, 0, "rows")


@pytest.mark.parametrize("name", UNSIGNED)
def test_a_torch_save_file_of_these_types_loads_as_torch_loads_it(name):
    x = _data(torch, name)
    state = {"x": x, "column": x[:, 1:], "t": x.t()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    expected = torch.load(io.BytesIO(buffer.getvalue()))
    loaded = kiln.load(buffer)
    for key, want in expected.items():
        assert_close(loaded[key], want, 0, 0, key)


def _computed(lib, x):
    return ((x * x).sum(), x.float() / 3, x * 3, x == 2, x / x, x.cumsum(1), x & x,
            lib.where(x == 2, x, x * 2), x.t().contiguous() * 2, x.long() + 1, x.double().sqrt())


@pytest.mark.parametrize("name", UNSIGNED)
def test_compiled_function_matches_torch_eager_without_falling_back(name):
    compiled = kiln.compile(lambda x: _computed(kiln, x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # a fallback to eager warns
        for _ in range(2):                      # the trace, then the compiled program
            got = compiled(_data(kiln, name))
    for i, (k, t) in enumerate(zip(got, _computed(torch, _data(torch, name)))):
        assert_close(k, t, 0, 1e-6, f"output {i}")


def test_unsigned_numpy_arrays_become_unsigned_tensors_as_in_torch():
    for np_dtype in (np.uint16, np.uint32, np.uint64):
        array = np.array([1, 2], dtype=np_dtype)
        assert kiln.from_numpy(array).dtype.name == str(torch.from_numpy(array).dtype)[6:]
