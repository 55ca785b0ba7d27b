"""torch._higher_order_ops.map at its torch path; it lives in
kiln.tracer.functional_extra.control_flow."""

from kiln.tracer.functional_extra.control_flow import map  # noqa: F401

__all__ = ["map"]
