"""AdaptiveLogSoftmaxWithLoss: a softmax over many classes, frequent ones in a head and rare
ones in smaller tail clusters (Grave et al., "Efficient softmax approximation for GPUs")."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

import kiln
from kiln import Tensor
from kiln.nn import functional as F
from kiln.nn.containers import ModuleList, Sequential
from kiln.nn.linear import Linear
from kiln.nn.module import Module


class _ASMoutput(NamedTuple):
    output: Tensor
    loss: Tensor


class AdaptiveLogSoftmaxWithLoss(Module):
    def __init__(self, in_features: int, n_classes: int, cutoffs: Sequence[int],
                 div_value: float = 4.0, head_bias: bool = False, device=None,
                 dtype=None) -> None:
        super().__init__()
        cutoffs = list(cutoffs)
        if (len(cutoffs) == 0 or cutoffs != sorted(cutoffs) or min(cutoffs) <= 0
                or max(cutoffs) > n_classes - 1 or len(set(cutoffs)) != len(cutoffs)
                or any(int(c) != c for c in cutoffs)):
            raise ValueError("cutoffs should be a sequence of unique, positive integers sorted "
                             "in an increasing order, where each value is between 1 and "
                             "n_classes-1")
        kw = {"device": device, "dtype": dtype}
        self.in_features, self.n_classes = in_features, n_classes
        self.cutoffs = cutoffs + [n_classes]
        self.div_value, self.head_bias = div_value, head_bias
        self.shortlist_size = self.cutoffs[0]
        self.n_clusters = len(self.cutoffs) - 1
        self.head_size = self.shortlist_size + self.n_clusters
        self.head = Linear(in_features, self.head_size, bias=head_bias, **kw)
        self.tail = ModuleList()
        for i in range(self.n_clusters):
            hsz = int(in_features // (div_value ** (i + 1)))
            osz = self.cutoffs[i + 1] - self.cutoffs[i]
            self.tail.append(Sequential(Linear(in_features, hsz, bias=False, **kw),
                                        Linear(hsz, osz, bias=False, **kw)))

    def reset_parameters(self) -> None:
        self.head.reset_parameters()
        for i2h, h2o in self.tail:
            i2h.reset_parameters()
            h2o.reset_parameters()

    def forward(self, input: Tensor, target: Tensor) -> _ASMoutput:
        unbatched = input.ndim == 1
        if unbatched:
            input, target = input.unsqueeze(0), target.unsqueeze(0)
        if input.ndim != 2 or target.ndim != 1 or input.shape[0] != target.shape[0]:
            raise RuntimeError("Input and target should have the same size in the batch "
                               "dimension, with 2-D input and 1-D target")
        labels = np.asarray(target.detach().cpu().numpy())
        if labels.size and (labels.min() < 0 or labels.max() >= self.n_classes):
            raise RuntimeError(f"Target values should be in [0, {self.n_classes - 1}], but "
                               f"values in range [{labels.min()}, {labels.max()}] were found. ")
        batch = input.shape[0]
        gather = labels.copy()
        output = kiln.zeros(batch, dtype=input.dtype, device=input.device)
        bounds = [0] + self.cutoffs
        for i in range(1, len(bounds) - 1):
            rows = np.nonzero((labels >= bounds[i]) & (labels < bounds[i + 1]))[0]
            if rows.size == 0:
                continue
            gather[rows] = self.shortlist_size + i - 1
            index = kiln.tensor(rows, device=input.device)
            cluster = F.log_softmax(self.tail[i - 1](kiln.index_select(input, 0, index)), 1)
            local = kiln.tensor((labels[rows] - bounds[i])[:, None], device=input.device)
            output = output.index_add(0, index, kiln.gather(cluster, 1, local).squeeze(1))
        head = F.log_softmax(self.head(input), 1)
        output = output + kiln.gather(head, 1, kiln.tensor(gather[:, None],
                                                           device=input.device)).squeeze(1)
        loss = (-output).mean()
        return _ASMoutput(output.squeeze(0) if unbatched else output, loss)

    def _full_log_prob(self, input: Tensor, head_output: Tensor) -> Tensor:
        head = F.log_softmax(head_output, 1)
        parts = [head[:, :self.shortlist_size]]
        for i, tail in enumerate(self.tail):
            cluster = F.log_softmax(tail(input), 1)
            parts.append(cluster + head[:, self.shortlist_size + i].unsqueeze(1))
        return kiln.cat(parts, 1)

    def log_prob(self, input: Tensor) -> Tensor:
        """log P(class | input) for every class: (N, n_classes)."""
        return self._full_log_prob(input, self.head(input))

    def predict(self, input: Tensor) -> Tensor:
        return self.log_prob(input).argmax(1)
