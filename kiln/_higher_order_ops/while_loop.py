"""torch._higher_order_ops.while_loop at its torch path; it lives in
kiln.tracer.functional_extra.control_flow."""

from kiln.tracer.functional_extra.control_flow import while_loop  # noqa: F401

__all__ = ["while_loop"]
