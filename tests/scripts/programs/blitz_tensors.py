"""60-minute blitz, tensors: creation, attributes, indexing, joining, arithmetic, in-place ops
and the NumPy bridge; the values are computed from fixed data so both libraries must agree."""
import numpy as np
import torch


def main(seed=0, compile=False, initial_state=None):
    data = [[1, 2], [3, 4]]
    x_data = torch.tensor(data)
    np_array = np.array(data)
    x_np = torch.from_numpy(np_array)
    x_ones = torch.ones_like(x_data)
    x_like = torch.zeros_like(x_data, dtype=torch.float)
    shape = (2, 3,)
    ones_tensor = torch.ones(shape)
    zeros_tensor = torch.zeros(shape)
    tensor = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    values = {
        "x_data": x_data, "x_np": x_np, "x_ones": x_ones, "x_like": x_like,
        "ones": ones_tensor, "zeros": zeros_tensor,
        "shape": list(tensor.shape), "dtype": str(tensor.dtype).replace("kiln", "torch"),
        "device": str(tensor.device),
        "first_row": tensor[0], "first_column": tensor[:, 0], "last_column": tensor[..., -1],
    }
    tensor[:, 1] = 0
    values["assigned"] = tensor.clone()
    values["cat"] = torch.cat([tensor, tensor, tensor], dim=1)
    values["stack"] = torch.stack([tensor, tensor])
    y1 = tensor @ tensor.T
    y2 = tensor.matmul(tensor.T)
    y3 = torch.rand_like(y1)
    torch.matmul(tensor, tensor.T, out=y3)
    z1 = tensor * tensor
    z2 = tensor.mul(tensor)
    z3 = torch.rand_like(tensor)
    torch.mul(tensor, tensor, out=z3)
    values.update(y1=y1, y2=y2, y3=y3, z1=z1, z2=z2, z3=z3)
    agg = tensor.sum()
    values["agg_item"] = agg.item()
    tensor.add_(5)
    values["add_"] = tensor.clone()
    t = torch.ones(5)
    n = t.numpy()
    t.add_(1)
    values["numpy_shares_memory"] = n.copy()
    n = np.ones(5)
    t = torch.from_numpy(n)
    np.add(n, 1, out=n)
    values["from_numpy_shares_memory"] = t.clone()
    values["view"] = torch.arange(8).view(2, -1)
    values["transpose"] = torch.arange(6.).reshape(2, 3).t().contiguous()
    return {"losses": [], "values": values}


if __name__ == "__main__":
    print(main())
