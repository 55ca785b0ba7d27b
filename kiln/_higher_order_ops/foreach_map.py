"""torch._higher_order_ops.foreach_map at its torch path (the foreach_map recipe imports it from
there); it lives in kiln.tracer.functional_extra.control_flow."""

from kiln.tracer.functional_extra.control_flow import foreach_map  # noqa: F401

__all__ = ["foreach_map"]
