"""`kiln._higher_order_ops`: torch._higher_order_ops' control-flow operators at torch's module
paths (`from torch._higher_order_ops.scan import scan`); they live in
kiln.tracer.functional_extra.control_flow."""

# imported from the submodules, so a later `import kiln._higher_order_ops.cond` leaves the
# package's `cond` the function (as in torch)
from kiln._higher_order_ops.associative_scan import associative_scan  # noqa: F401
from kiln._higher_order_ops.cond import cond  # noqa: F401
from kiln._higher_order_ops.map import map  # noqa: F401,A004
from kiln._higher_order_ops.scan import scan  # noqa: F401
from kiln._higher_order_ops.while_loop import while_loop  # noqa: F401
from kiln._higher_order_ops.foreach_map import foreach_map  # noqa: F401

__all__ = ["associative_scan", "cond", "foreach_map", "map", "scan", "while_loop"]
