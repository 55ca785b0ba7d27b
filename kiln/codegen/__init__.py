"""Fused kernel groups -> kernel source: `kernel.lower` builds a loop-level description,
`triton.render_triton` and `c.render_c` turn it into Triton or C source, and
`lower.lower_schedule` decides for a whole fused program what runs (the LoweredProgram)."""
