"""Variable-length sequences for recurrent layers: padding, packing and `PackedSequence`.

A packed batch stores the sequences sorted by decreasing length, time-major: step t holds
`batch_sizes[t]` rows, one per sequence still running at t (PyTorch's layout, so the `data`
and `batch_sizes` of a kiln PackedSequence equal torch's).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

import kiln
from kiln import Tensor

__all__ = ["PackedSequence", "pack_padded_sequence", "pad_packed_sequence", "pad_sequence",
           "pack_sequence", "unpad_sequence", "unpack_sequence", "invert_permutation"]


class PackedSequence(NamedTuple):
    """`torch.nn.utils.rnn.PackedSequence`: the packed rows and how many run at each step."""

    data: Tensor
    batch_sizes: Tensor
    sorted_indices: Tensor | None = None
    unsorted_indices: Tensor | None = None

    def to(self, *args, **kwargs) -> "PackedSequence":
        return self._replace(data=self.data.to(*args, **kwargs))

    def cpu(self) -> "PackedSequence":
        return self._replace(data=self.data.cpu())

    def cuda(self, *args, **kwargs) -> "PackedSequence":
        return self._replace(data=self.data.cuda(*args, **kwargs))

    def double(self) -> "PackedSequence":
        return self._replace(data=self.data.double())

    def float(self) -> "PackedSequence":
        return self._replace(data=self.data.float())

    @property
    def is_cuda(self) -> bool:
        return self.data.is_cuda


def invert_permutation(permutation: Tensor | None) -> Tensor | None:
    if permutation is None:
        return None
    order = np.asarray(permutation.tolist(), dtype=np.int64)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return kiln.tensor(inverse, device=permutation.device)


def _lengths_list(lengths) -> list[int]:
    if isinstance(lengths, Tensor):
        lengths = lengths.tolist()
    return [int(n) for n in lengths]


def _packed_rows(lengths_sorted: Sequence[int], batch: int, batch_first: bool,
                 steps: int) -> tuple[np.ndarray, list[int]]:
    """Row indices into the flattened padded tensor, in packed order, and the batch sizes.

    `lengths_sorted[j]` is the length of the j-th sequence in sorted order; the returned rows
    index a (steps*batch) flattening of the padded tensor whose batch order is the sorted one.
    """
    rows, batch_sizes = [], []
    for t in range(max(lengths_sorted) if lengths_sorted else 0):
        running = [j for j, n in enumerate(lengths_sorted) if n > t]
        batch_sizes.append(len(running))
        rows.extend(j * steps + t if batch_first else t * batch + j for j in running)
    return np.asarray(rows, dtype=np.int64), batch_sizes


def _pack_with_order(input: Tensor, lengths: list[int], order: np.ndarray,
                     batch_first: bool) -> PackedSequence:
    device = input.device
    x = kiln.index_select(input, 0 if batch_first else 1, kiln.tensor(order, device=device))
    batch = len(lengths)
    steps = x.shape[1] if batch_first else x.shape[0]
    rows, batch_sizes = _packed_rows([lengths[i] for i in order], batch, batch_first, steps)
    flat = x.reshape(steps * batch, *x.shape[2:])
    data = kiln.index_select(flat, 0, kiln.tensor(rows, device=device))
    # batch_sizes stays on the CPU, the index permutations follow the data (PyTorch's rule)
    sorted_indices = kiln.tensor(order, device=device)
    return PackedSequence(data, kiln.tensor(batch_sizes, device="cpu"), sorted_indices,
                          invert_permutation(sorted_indices))


def pack_padded_sequence(input: Tensor, lengths, batch_first: bool = False,
                         enforce_sorted: bool = True) -> PackedSequence:
    """Pack a padded batch (T, B, *) or (B, T, *) of sequences of the given lengths."""
    lengths = _lengths_list(lengths)
    if any(n <= 0 for n in lengths):
        raise RuntimeError("pack_padded_sequence: every length must be positive; got "
                           f"{lengths}")
    if enforce_sorted:
        if any(a < b for a, b in zip(lengths, lengths[1:])):
            raise RuntimeError("`lengths` array must be sorted in decreasing order when "
                               "`enforce_sorted` is True. You can pass `enforce_sorted=False` "
                               "to pack_padded_sequence and/or pack_sequence to sidestep this "
                               "requirement if you do not need ONNX exportability.")
        packed = _pack_with_order(input, lengths, np.arange(len(lengths)), batch_first)
        return packed._replace(sorted_indices=None, unsorted_indices=None)
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return _pack_with_order(input, lengths, order, batch_first)


def _packed_lengths(batch_sizes: list[int]) -> list[int]:
    """Lengths of the sorted sequences, read back from the batch sizes."""
    batch = batch_sizes[0] if batch_sizes else 0
    return [sum(1 for b in batch_sizes if b > j) for j in range(batch)]


def pad_packed_sequence(sequence: PackedSequence, batch_first: bool = False,
                        padding_value: float = 0.0,
                        total_length: int | None = None) -> tuple[Tensor, Tensor]:
    """The padded batch (in the original order) and the lengths, inverse of packing."""
    batch_sizes = _lengths_list(sequence.batch_sizes)
    lengths_sorted = _packed_lengths(batch_sizes)
    batch, steps = len(lengths_sorted), len(batch_sizes)
    if total_length is not None:
        if total_length < steps:
            raise ValueError(f"Expected total_length to be at least the length of the longest "
                             f"sequence in input, but got total_length={total_length} and max "
                             f"sequence length being {steps}")
        steps = total_length
    data = sequence.data
    # scatter the packed rows into a (steps*batch + 1)-row table whose last row is padding
    rows, _ = _packed_rows(lengths_sorted, batch, False, steps)
    source = np.full(steps * batch, len(rows), dtype=np.int64)
    source[rows] = np.arange(len(rows))
    pad_row = kiln.full((1, *data.shape[1:]), padding_value, dtype=data.dtype,
                        device=data.device)
    table = kiln.cat([data, pad_row], 0)
    rows = kiln.tensor(source, device=data.device)
    padded = kiln.index_select(table, 0, rows).reshape(steps, batch, *data.shape[1:])
    lengths = np.asarray(lengths_sorted, dtype=np.int64)
    if sequence.unsorted_indices is not None:
        padded = kiln.index_select(padded, 1, sequence.unsorted_indices.to(data.device))
        lengths = lengths[np.asarray(sequence.unsorted_indices.tolist(), dtype=np.int64)]
    if batch_first:
        padded = padded.transpose(0, 1)
    return padded, kiln.tensor(lengths, device="cpu")


def pad_sequence(sequences: Sequence[Tensor] | Tensor, batch_first: bool = False,
                 padding_value: float = 0.0, padding_side: str = "right") -> Tensor:
    """Stack sequences of different lengths into one padded (T, B, *) or (B, T, *) tensor."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"Expected padding_side to be one of left or right, but got "
                         f"{padding_side}.")
    sequences = list(sequences)
    longest = max(s.shape[0] for s in sequences)
    padded = []
    for s in sequences:
        missing = longest - s.shape[0]
        if missing:
            fill = kiln.full((missing, *s.shape[1:]), padding_value, dtype=s.dtype,
                             device=s.device)
            s = kiln.cat([s, fill] if padding_side == "right" else [fill, s], 0)
        padded.append(s)
    return kiln.stack(padded, 0 if batch_first else 1)


def pack_sequence(sequences: Sequence[Tensor], enforce_sorted: bool = True) -> PackedSequence:
    lengths = [s.shape[0] for s in sequences]
    return pack_padded_sequence(pad_sequence(sequences), lengths, enforce_sorted=enforce_sorted)


def unpad_sequence(padded_sequences: Tensor, lengths, batch_first: bool = False) -> list:
    if not batch_first:
        padded_sequences = padded_sequences.transpose(0, 1)
    return [padded_sequences[i, :n] for i, n in enumerate(_lengths_list(lengths))]


def unpack_sequence(packed_sequences: PackedSequence) -> list:
    padded, lengths = pad_packed_sequence(packed_sequences, batch_first=True)
    return unpad_sequence(padded, lengths, batch_first=True)
