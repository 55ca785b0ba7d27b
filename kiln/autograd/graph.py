"""`kiln.autograd.graph`: the grad_fn node type (torch.autograd.graph.Node)."""

from kiln.tracer.autograd import Node  # noqa: F401
