"""The dump report shows each fused kernel's C source beside its Triton source."""

import kiln
from kiln import dump
from kiln.compiler import trace


def test_dump_sections_have_c_beside_triton(tmp_path):
    program = trace(lambda x: kiln.softmax(x * 2, -1) + x.tanh(), kiln.randn(3, 5)).programs[0]
    sections = dict(dump.program_sections(program))
    triton, c = sections["generated kernels (Triton)"], sections["generated kernels (C)"]
    assert "# ---- step 0: k0 triton kernel" in triton and "@triton.jit" in triton
    assert "void k0_" in c and "#pragma omp" in c and "KILN_HELPER float kiln_expf" in c
    (page,) = [p for p in dump.write_programs(tmp_path, "f", [program], formats=("html",))
               if p.suffix == ".html"]
    html = page.read_text()
    assert "generated kernels (C)" in html and "display:flex" in html
