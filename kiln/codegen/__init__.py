"""Fused kernel groups -> kernel source: `kernel.lower` builds a loop-level description and
`triton.render_triton` turns it into Triton source; a CPU renderer will sit beside it."""
