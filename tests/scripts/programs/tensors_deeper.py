"""The introyt tensors tutorial (and the basics tensor quickstart): factories and `_like`
methods, seeding, dtypes and `.to`, arithmetic and broadcasting (and the shapes that do not
broadcast), common math, trigonometry, bitwise ops, comparisons, reductions, linear algebra,
in-place ops, `out=` arguments, copying with clone and detach, squeeze/unsqueeze and reshape,
and the NumPy bridge; what the tutorial prints is compared as text."""
import math

import numpy as np
import torch


def fails(fn):
    try:
        fn()
        return "ran"
    except RuntimeError:
        return "RuntimeError"


def main(seed=0, compile=False, initial_state=None):
    values = {}
    printed = []
    torch.manual_seed(1729)
    random1 = torch.rand(2, 3)
    random2 = torch.rand(2, 3)
    torch.manual_seed(1729)
    values["reseeded"] = bool(torch.equal(random1, torch.rand(2, 3))) and \
        bool(torch.equal(random2, torch.rand(2, 3)))
    x = torch.empty(2, 2, 3)
    likes = [torch.empty_like(x), torch.zeros_like(x), torch.ones_like(x), torch.rand_like(x)]
    values["like_shapes"] = str([tuple(t.shape) for t in likes])
    printed.append(torch.zeros_like(x))
    printed.append(torch.tensor([[3.1415926, 2.71828], [1.61803, 0.0072897]]))
    printed.append(torch.tensor((2, 3, 5, 7, 11, 13, 17, 19)))
    printed.append(torch.tensor(((2, 4, 6), [3, 6, 9])))
    a = torch.ones((2, 3), dtype=torch.int16)
    printed.append(a)
    b = torch.rand((2, 3), dtype=torch.float64) * 20.
    printed.append(b)
    printed.append(b.to(torch.int32))

    ones = torch.zeros(2, 2) + 1
    twos = torch.ones(2, 2) * 2
    threes = (torch.ones(2, 2) * 7 - 1) / 2
    fours = twos ** 2
    printed += [ones, threes, twos ** 0.5, twos ** torch.tensor([[1, 2], [3, 4]]),
                ones + fours, threes * fours]
    values["mismatched_shapes"] = fails(lambda: torch.rand(2, 3) * torch.rand(3, 2))
    rand = torch.rand(2, 4)
    printed.append(rand * (torch.ones(1, 4) * 2))
    a = torch.ones(4, 3, 2)
    printed += [a * torch.rand(3, 2), a * torch.rand(3, 1), a * torch.rand(1, 2)]
    values["bad_broadcast_1"] = fails(lambda: a * torch.rand(4, 3))
    values["bad_broadcast_2"] = fails(lambda: a * torch.rand(2, 3))
    values["bad_broadcast_3"] = fails(lambda: a * torch.rand((0, )))

    a = torch.rand(2, 4) * 2 - 1
    printed += [torch.abs(a), torch.ceil(a), torch.floor(a), torch.clamp(a, -0.5, 0.5)]
    angles = torch.tensor([0, math.pi / 4, math.pi / 2, 3 * math.pi / 4])
    sines = torch.sin(angles)
    printed += [angles, sines, torch.asin(sines)]
    printed.append(torch.bitwise_xor(torch.tensor([1, 5, 11]), torch.tensor([2, 7, 10])))
    d = torch.tensor([[1., 2.], [3., 4.]])
    printed += [torch.eq(d, torch.ones(1, 2)), torch.max(d), torch.mean(d), torch.std(d),
                torch.prod(d), torch.unique(torch.tensor([1, 2, 1, 2, 1, 2]))]
    values["max_item"] = torch.max(d).item()
    v1, v2 = torch.tensor([1., 0., 0.]), torch.tensor([0., 1., 0.])
    m1 = torch.rand(2, 2)
    m2 = torch.tensor([[3., 0.], [0., 3.]])
    m3 = torch.matmul(m1, m2)
    printed += [torch.linalg.cross(v2, v1), m3]
    u, s, v = torch.svd(m3)
    values["svd_s"] = s
    values["svd_rebuilt"] = u @ torch.diag(s) @ v.T

    a = torch.tensor([0, math.pi / 4, math.pi / 2, 3 * math.pi / 4])
    printed += [torch.sin(a), a]
    b = torch.tensor([0, math.pi / 4, math.pi / 2, 3 * math.pi / 4])
    printed += [torch.sin_(b), b]
    a, b = torch.ones(2, 2), torch.rand(2, 2)
    printed += [a.add_(b), a, b.mul_(b)]
    a, b = torch.rand(2, 2), torch.rand(2, 2)
    c = torch.zeros(2, 2)
    old_id = id(c)
    d = torch.matmul(a, b, out=c)
    values["out_same_object"] = id(c) == old_id and d is c
    torch.rand(2, 2, out=c)
    values["rand_out_same_object"] = id(c) == old_id
    printed.append(c)

    a = torch.ones(2, 2)
    b = a
    a[0][1] = 561
    values["alias_sees_write"] = bool(torch.equal(a, b))
    c = a.clone()
    values["clone_distinct"] = not torch.equal(c, torch.zeros(2, 2)) and c is not a
    a[0][1] = 1
    values["clone_kept"] = c[0][1].item()
    a = torch.rand(2, 2, requires_grad=True)
    values["clone_grad"] = a.clone().requires_grad
    values["detached_grad"] = a.detach().clone().requires_grad

    a = torch.rand(3, 226, 226)
    b = a.unsqueeze(0)
    values["unsqueeze_shape"] = str(tuple(b.shape))
    c = torch.rand(1, 1, 1, 1, 1)
    printed.append(c.shape)
    a = torch.rand(1, 20)
    values["squeeze_shape"] = str(tuple(a.squeeze(0).shape))
    values["squeeze_noop"] = str(tuple(torch.rand(2, 2).squeeze(0).shape))
    a = torch.ones(4, 3, 2)
    c = a * torch.rand(3, 1)
    d = torch.rand(3).unsqueeze(1)
    values["unsqueezed_broadcast"] = a * d
    batch_me = torch.rand(3, 226, 226)
    batch_me.unsqueeze_(0)
    values["unsqueeze_in_place"] = str(tuple(batch_me.shape))
    output3d = torch.rand(6, 20, 20)
    input1d = output3d.reshape(6 * 20 * 20)
    values["reshape_shape"] = str(tuple(input1d.shape))
    values["reshape_fn_shape"] = str(tuple(torch.reshape(output3d, (6 * 20 * 20,)).shape))

    numpy_array = np.ones((2, 3))
    pytorch_tensor = torch.from_numpy(numpy_array)
    numpy_array[1, 1] = 23
    printed.append(pytorch_tensor)
    pytorch_rand = torch.rand(2, 3)
    numpy_rand = pytorch_rand.numpy()
    pytorch_rand[1, 1] = 17
    values["numpy_shares"] = float(numpy_rand[1, 1])
    tensor = torch.ones(4, 4)
    tensor[:, 1] = 0
    printed.append(torch.cat([tensor, tensor, tensor], dim=1))
    printed += [tensor @ tensor.T, tensor * tensor]
    agg = tensor.sum()
    values["agg_item"] = agg.item()
    printed.append(tensor.add_(5))
    values["printed"] = "\n".join(str(p) for p in printed)
    return {"losses": [], "values": values, "initial_state": {}}
