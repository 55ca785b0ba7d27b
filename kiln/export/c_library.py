"""The C route: an exported program as one self-contained C source, a weights file and a shared
library with a four-function C ABI, which runs with no Python at all.

The program's graph (at fixed sizes: a C library has static shapes) goes through kiln's pass
pipeline and fusion, as a compiled function's would; each fused kernel is rendered by kiln's C
renderer (kiln/codegen/c.py). The steps the renderer does not generate (matmul, im2col's
unfold, gathers, concatenation, padding) are written here as plain C: matrix products call
CBLAS when the C compiler finds `cblas.h` and OpenBLAS (`apt-get install libopenblas-dev`), and
otherwise run as C loops. Steps that read only weights (a transposed weight, batch norm's
folded scale) run once, in `kiln_model_load`.

The ABI (see the generated header):

    kiln_model *kiln_model_load(const char *weights_path);     // NULL on failure
    int kiln_model_run(kiln_model *m, const void *const *inputs, void *const *outputs);
    void kiln_model_free(kiln_model *m);
    const char *kiln_model_error(void);                          // why the last call failed

Inputs and outputs are C-contiguous arrays of the dtypes and shapes the header lists. A model
runs one call at a time (its intermediate buffers are its own); load several for threads.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kiln.export.program import ExportedProgram, load
from kiln.ir import dtypes as dt
from kiln.ir.graph import Value

WEIGHTS_MAGIC = b"KILNWTS1"
ALIGN = 64
# ops this module writes as C (the rest of the graph goes through the kernel generator)
C_EXTERNS = ("matmul", "pad", "unfold", "take", "cat", "check_index", "check_values")


@dataclass
class CLibrary:
    """What `build_c_library` wrote: source, header, weights, and the built library."""

    directory: Path
    source: Path
    header: Path
    weights: Path
    library: Path | None
    inputs: list            # (name, dtype, shape) per input, in the ABI's order
    outputs: list
    blas: bool              # whether matmuls call CBLAS (else C loops)
    kernels: list = field(default_factory=list)     # rendered kernel names

    def open(self) -> "CModel":
        """The built library loaded into this process (through ctypes), for checks and
        benchmarks from Python; deployments link it from C instead."""
        return CModel(self)


class CModel:
    """A loaded C library: `model(*arrays)` runs `kiln_model_run` and returns the outputs."""

    def __init__(self, lib: CLibrary):
        import ctypes
        if lib.library is None:
            raise CLibraryError("kiln.export: the C library was not built (build=False)")
        self.lib, self._so = lib, ctypes.CDLL(str(lib.library))
        self._so.kiln_model_load.restype = ctypes.c_void_p
        self._so.kiln_model_load.argtypes = [ctypes.c_char_p]
        self._so.kiln_model_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        self._so.kiln_model_free.argtypes = [ctypes.c_void_p]
        self._so.kiln_model_error.restype = ctypes.c_char_p
        self._handle = self._so.kiln_model_load(os.fsencode(lib.weights))
        if not self._handle:
            raise CLibraryError(f"kiln.export: kiln_model_load failed: "
                                f"{self._so.kiln_model_error().decode()}")
        n_in, n_out = len(lib.inputs), len(lib.outputs)
        self._in = (ctypes.c_void_p * max(n_in, 1))()
        self._outputs = [np.empty(shape, d.np) for _, d, shape in lib.outputs]
        self._out = (ctypes.c_void_p * max(n_out, 1))(*[a.ctypes.data for a in self._outputs])

    def __call__(self, *arrays) -> list:
        if len(arrays) != len(self.lib.inputs):
            raise TypeError(f"the C library takes {len(self.lib.inputs)} inputs, got "
                            f"{len(arrays)}")
        keep = []
        for k, (a, (name, d, shape)) in enumerate(zip(arrays, self.lib.inputs)):
            a = np.ascontiguousarray(a)
            if a.dtype != d.np or a.shape != tuple(shape):
                raise RuntimeError(f"kiln.export: input {name!r} has {a.dtype}{list(a.shape)}; "
                                   f"the C library was built for {d.name}{list(shape)}")
            keep.append(a)
            self._in[k] = a.ctypes.data
        if self._so.kiln_model_run(self._handle, self._in, self._out) != 0:
            raise RuntimeError(f"kiln.export: kiln_model_run failed: "
                               f"{self._so.kiln_model_error().decode()}")
        return [a.copy() for a in self._outputs]

    def __del__(self):
        if getattr(self, "_handle", None):
            self._so.kiln_model_free(self._handle)
            self._handle = None


class CLibraryError(RuntimeError):
    """The program cannot be written as C (an op without a C implementation), or cc failed."""


def build_c_library(program, out_dir, sizes: dict | None = None, name: str = "kiln_model",
                    build: bool = True, blas: bool | None = None) -> CLibrary:
    """Write `program` (an ExportedProgram or the path of a saved one) as C into `out_dir`:
    `<name>.c`, `<name>.h`, `<name>.weights` and, when `build`, `lib<name>.so`.

    Args:
        sizes: values of the program's dynamic sizes ({"batch": 64}); default: as traced.
        blas: use CBLAS for matmuls (default: when the C compiler finds it).
    """
    ep = program if isinstance(program, ExportedProgram) else load(program)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if blas is None:
        blas = cblas_available()
    gen = _Generator(ep, ep.graph_for(sizes), name)
    source, header = gen.source(), gen.header()
    paths = {ext: out / f"{name}.{ext}" for ext in ("c", "h", "weights")}
    paths["c"].write_text(source)
    paths["h"].write_text(header)
    _write_weights(paths["weights"], gen.weight_arrays)
    lib = None
    if build:
        lib = out / f"lib{name}.so"
        _compile(paths["c"], lib, blas)
    return CLibrary(out, paths["c"], paths["h"], paths["weights"], lib, gen.input_info,
                    gen.output_info, blas, gen.kernel_names)


def cblas_available() -> bool:
    """Whether the C compiler finds cblas.h and links OpenBLAS."""
    import shutil
    import subprocess
    import tempfile
    probe = "#include <cblas.h>\nint main(void){float a=1,b=1,c=0;" \
            "cblas_sgemm(CblasRowMajor,CblasNoTrans,CblasNoTrans,1,1,1,1,&a,1,&b,1,0,&c,1);" \
            "return c != 1;}\n"
    cc = os.environ.get("CC") or "cc"
    if shutil.which(cc) is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text(probe)
        done = subprocess.run([cc, str(src), "-o", str(Path(tmp) / "probe"), "-lopenblas"],
                              capture_output=True)
        return done.returncode == 0


def _compile(src: Path, lib: Path, blas: bool) -> None:
    import subprocess
    from kiln.runtime.c_build import FLAGS
    cc = os.environ.get("CC") or "cc"
    cmd = [cc, *FLAGS, str(src), "-o", str(lib)]
    if blas:
        cmd += ["-DKILN_USE_CBLAS", "-lopenblas"]
    cmd += ["-lm"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise CLibraryError(f"kiln.export: building {lib.name} failed ({' '.join(cmd)}):\n"
                            f"{done.stderr[-4000:]}")


def _write_weights(path: Path, arrays: list) -> None:
    """The weights file: magic, count, each array's byte size, then the arrays, each starting
    at a multiple of 64 bytes (little-endian, C order)."""
    head = WEIGHTS_MAGIC + struct.pack("<Q", len(arrays)) + b"".join(
        struct.pack("<Q", a.nbytes) for a in arrays)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(head + b"\0" * (-len(head) % ALIGN))
        for a in arrays:
            data = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False)
            f.write(data.tobytes())
            f.write(b"\0" * (-a.nbytes % ALIGN))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- generation

class _Generator:
    def __init__(self, ep, graph, name: str):
        from kiln.passes.fusion import split_gathers
        from kiln.passes.pipeline import compile_passes
        self.ep, self.name = ep, name
        compiled = compile_passes(graph, None, fused=True, conv_products=False)
        schedule, self.numbers = split_gathers(compiled.forward.schedule)
        self.graph = g = schedule.graph
        self.steps = schedule.steps
        n_args = len(ep.input_specs)
        self.expr: dict = {}            # Value -> C pointer expression
        self.static: set = set()        # Values computed from weights and constants only
        self.weight_arrays: list = []
        self.buffers: list = []         # computed Values, one malloc'd buffer each
        self.constants: list = []
        self.helpers: list = []
        self.ckernels: list = []
        self.kernel_names: list = []
        self.load_lines: list = []
        self.run_lines: list = []
        for i, v in enumerate(g.inputs):
            ctype = _ctype(v.dtype)
            if i < n_args:
                self.expr[v] = f"(({ctype} *)inputs[{i}])"
            else:
                pname = ep.parameter_names[i - n_args]
                self.expr[v] = f"(({ctype} *)m->w[{len(self.weight_arrays)}])"
                self.weight_arrays.append(ep.state_dict[pname].numpy())
                self.static.add(v)
        for k, (v, array) in enumerate(g.constants.items()):
            self.expr[v] = f"kiln_c{k}"
            self.constants.append((f"kiln_c{k}", v, array))
            self.static.add(v)
        self.input_info = [(s.name, v.dtype, v.shape)
                           for s, v in zip(ep.input_specs, graph.inputs)]
        self.output_info = [(s.name, v.dtype, v.shape)
                            for s, v in zip(ep.output_specs, g.outputs)]
        self.calls_blas = any(getattr(st, "node", None) is not None and st.node.op == "matmul"
                              for st in self.steps)
        for step, number in zip(self.steps, self.numbers):
            self._step(step, number)

    # ------------------------------------------------------------------ steps
    def _buffer(self, v: Value) -> str:
        if v not in self.expr:
            self.expr[v] = f"(({_ctype(v.dtype)} *)m->b[{len(self.buffers)}])"
            self.buffers.append(v)
        return self.expr[v]

    def _lines_for(self, inputs) -> list:
        return self.load_lines if all(v in self.static for v in inputs) else self.run_lines

    def _step(self, step, number) -> None:
        from kiln.codegen.kernel import LoweringError
        from kiln.passes.fusion import FusedKernel
        if not isinstance(step, FusedKernel):
            self._extern(step.node)
            return
        sub = step.subgraph
        if len(step.inputs) == 1 and len(step.outputs) == 1 and sub.nodes and \
                all(n.op == "reshape" for n in sub.nodes):
            # every buffer here is contiguous: a reshape is the same memory, no copy
            self.expr[step.outputs[0]] = self.expr[step.inputs[0]]
            if step.inputs[0] in self.static:
                self.static.add(step.outputs[0])
            return
        try:
            self._kernel(step.subgraph, step.inputs, step.outputs, number)
        except LoweringError:
            # one node at a time: the generator takes most of them alone, C_EXTERNS are ours
            inner = dict(zip(step.subgraph.inputs, step.inputs))
            inner.update(zip(step.subgraph.outputs, step.outputs))
            for k, n in enumerate(step.subgraph.nodes):
                outer = n.out if n.out not in inner else inner[n.out]
                ins = tuple(inner.get(v, v) if isinstance(v, Value) else v for v in n.inputs)
                node = type(n)(n.op, ins, n.attrs, outer, n.loc, n.scope)
                inner[n.out] = outer
                if n.op in C_EXTERNS:
                    self._extern(node)
                else:
                    from kiln.passes.fusion import ExternStep
                    st = ExternStep(node)
                    self._kernel(st.subgraph, st.inputs, st.outputs, f"{number}_{k}")

    def _kernel(self, sub, inputs, outputs, number) -> None:
        from kiln.codegen.c import PARALLEL_MIN, PARALLEL_MIN_NEAR_BLAS, render_c
        from kiln.codegen.kernel import lower
        kernel = lower(sub)
        ck = render_c(kernel, name=f"{number}_{kernel.name}", parallel_min=(
            PARALLEL_MIN_NEAR_BLAS if self.calls_blas else PARALLEL_MIN))
        self.ckernels.append(ck)
        self.kernel_names.append(ck.name)
        args = [self.expr[v] for v in inputs] + [self._buffer(v) for v in outputs]
        lines = self._lines_for(inputs)
        if all(v in self.static for v in inputs):
            self.static.update(outputs)
        lines.append(f"{ck.name}({', '.join(args)});")

    def _extern(self, node) -> None:
        emit = _EXTERNS.get(node.op)
        if emit is None:
            raise CLibraryError(f"kiln.export: the C library has no implementation of op "
                                f"{node.op!r} (node {node.out.ref}, from {node.loc}); the C "
                                f"route generates fusible ops and {', '.join(C_EXTERNS)}")
        ins = [self.expr[v] if isinstance(v, Value) else v for v in node.inputs]
        out = self._buffer(node.out)
        values = node.value_inputs
        lines = self._lines_for(values)
        if all(v in self.static for v in values):
            self.static.add(node.out)
        lines.append(f"/* {node.op} -> {node.out.ref}, from {_short(node.loc)} */")
        lines += emit(self, node, ins, out)

    # ------------------------------------------------------------------ text
    def source(self) -> str:
        from kiln.codegen.c import c_module
        n_w, n_b = len(self.weight_arrays), len(self.buffers)
        parts = [c_module(self.ckernels, f"{self.name}: graph {self.graph.name!r} as C"),
                 _SUPPORT]
        for cname, v, array in self.constants:
            flat = ", ".join(_c_literal(x, v.dtype) for x in array.reshape(-1).tolist()) or "0"
            parts.append(f"static const {_ctype(v.dtype)} {cname}[{max(array.size, 1)}] = "
                         f"{{{flat}}};")
        sizes = ", ".join(str(a.nbytes) for a in self.weight_arrays) or "0"
        buf_sizes = ", ".join(str(max(v.nbytes, 1)) for v in self.buffers) or "0"
        parts.append(f"""
struct kiln_model {{
    void *weights;                  /* one block: the weights file's arrays */
    void *w[{max(n_w, 1)}];
    void *b[{max(n_b, 1)}];         /* one buffer per intermediate value */
}};

static const uint64_t kiln_weight_bytes[{max(n_w, 1)}] = {{{sizes}}};
static const uint64_t kiln_buffer_bytes[{max(n_b, 1)}] = {{{buf_sizes}}};

void kiln_model_free(kiln_model *m) {{
    if (!m) return;
    for (int i = 0; i < {n_b}; i++) free(m->b[i]);
    free(m->weights);
    free(m);
}}

/* steps that read only weights and constants: once, at load */
static int kiln_prepare(kiln_model *m) {{
{_indent(self.load_lines)}
    return 0;
}}

kiln_model *kiln_model_load(const char *weights_path) {{
    kiln_model *m = calloc(1, sizeof(kiln_model));
    if (!m) {{ kiln_fail("out of memory"); return NULL; }}
    if (kiln_read_weights(weights_path, {n_w}, kiln_weight_bytes, &m->weights, m->w) != 0) {{
        free(m);
        return NULL;
    }}
    for (int i = 0; i < {n_b}; i++) {{
        m->b[i] = kiln_alloc(kiln_buffer_bytes[i]);
        if (!m->b[i]) {{ kiln_model_free(m); kiln_fail("out of memory"); return NULL; }}
    }}
    if (kiln_prepare(m) != 0) {{ kiln_model_free(m); return NULL; }}
    return m;
}}

int kiln_model_run(kiln_model *m, const void *const *inputs, void *const *outputs) {{
    if (!m || !inputs || !outputs) return kiln_fail("kiln_model_run: a NULL argument");
{_indent(self.run_lines)}
{_indent(self._copy_outputs())}
    return 0;
}}
""")
        return "\n".join(parts)

    def _copy_outputs(self) -> list:
        return [f"memcpy(outputs[{k}], {self.expr[v]}, {v.nbytes});"
                for k, v in enumerate(self.graph.outputs)]

    def header(self) -> str:
        guard = self.name.upper() + "_H"
        lines = [f"/* {self.name}.h: the C interface of an exported kiln program (graph "
                 f"{self.graph.name!r}), generated by kiln.",
                 " * Arrays are C-contiguous; shapes are fixed at export. */",
                 f"#ifndef {guard}", f"#define {guard}", "#include <stdint.h>", "",
                 "typedef struct kiln_model kiln_model;", "",
                 f"#define KILN_MODEL_NUM_INPUTS {len(self.input_info)}",
                 f"#define KILN_MODEL_NUM_OUTPUTS {len(self.output_info)}"]
        for kind, info in (("INPUT", self.input_info), ("OUTPUT", self.output_info)):
            for k, (nm, d, shape) in enumerate(info):
                lines += [f"/* {kind.lower()} {k} {nm!r}: {d.name} {list(shape)} "
                          f"({_ctype(d)}) */",
                          f"#define KILN_MODEL_{kind}{k}_NUMEL {math.prod(shape)}",
                          f"#define KILN_MODEL_{kind}{k}_NDIM {len(shape)}",
                          f"#define KILN_MODEL_{kind}{k}_ITEMSIZE {d.itemsize}",
                          f"#define KILN_MODEL_{kind}{k}_SHAPE "
                          f"{{{', '.join(map(str, shape)) or '1'}}}"]
        lines += ["",
                  "/* Read the weights file; NULL on failure (see kiln_model_error). */",
                  "kiln_model *kiln_model_load(const char *weights_path);",
                  "/* inputs[i] and outputs[i]: one array per input and output; 0 on success. "
                  "*/",
                  "int kiln_model_run(kiln_model *model, const void *const *inputs, "
                  "void *const *outputs);",
                  "void kiln_model_free(kiln_model *model);",
                  "/* Why the last call in this thread failed. */",
                  "const char *kiln_model_error(void);", "", "#endif", ""]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- C externs

def _matmul(gen, node, ins, out) -> list:
    a, b = node.inputs
    if node.out.dtype not in (dt.float32, dt.float64):
        raise CLibraryError(f"kiln.export: the C library multiplies float32 and float64 "
                            f"matrices, not {node.out.dtype.name} (node {node.out.ref}, "
                            f"from {node.loc})")
    m, k = a.shape[-2:]
    n = b.shape[-1]
    batch = math.prod(a.shape[:-2])
    fn = "kiln_gemm_f32" if node.out.dtype is dt.float32 else "kiln_gemm_f64"
    return [f"for (int64_t q = 0; q < {batch}; q++)",
            f"    {fn}({m}, {n}, {k}, {ins[0]} + q * {m * k}, {ins[1]} + q * {k * n}, "
            f"{out} + q * {m * n});"]


def _pad(gen, node, ins, out) -> list:
    a = node.attr_dict
    x = node.inputs[0]
    shape, pads = x.shape, a["pads"]
    out_shape = node.out.shape
    strides = [math.prod(out_shape[i + 1:]) for i in range(len(out_shape))]
    start = sum(lo * s for (lo, _), s in zip(pads, strides))
    ctype = _ctype(node.out.dtype)
    lines = [f"for (int64_t i = 0; i < {math.prod(out_shape)}; i++) {out}[i] = "
             f"({ctype}){_c_literal(a['value'], node.out.dtype)};"]
    if math.prod(shape) == 0:
        return lines
    dims = ", ".join(map(str, shape)) or "1"
    dst = ", ".join(str(s * node.out.dtype.itemsize) for s in strides) or "0"
    return lines + [f"{{ static const int64_t shape[] = {{{dims}}}, dst[] = {{{dst}}};",
                    f"  kiln_copy_block((const char *){ins[0]}, (char *)({out} + {start}), "
                    f"{max(len(shape), 1)}, shape, dst, {node.out.dtype.itemsize}); }}"]


def _unfold(gen, node, ins, out) -> list:
    a = node.attr_dict
    n, c, h, w = node.inputs[0].shape
    _, oh, ow, kh, kw, _ = node.out.shape
    (sh, sw), (dh, dw) = a["stride"], a["dilation"]
    return [f"for (int64_t b = 0; b < {n}; b++)",
            f"for (int64_t y = 0; y < {oh}; y++)",
            f"for (int64_t x = 0; x < {ow}; x++)",
            f"for (int64_t i = 0; i < {kh}; i++)",
            f"for (int64_t j = 0; j < {kw}; j++)",
            f"for (int64_t ch = 0; ch < {c}; ch++)",
            f"    {out}[((((b * {oh} + y) * {ow} + x) * {kh} + i) * {kw} + j) * {c} + ch] = "
            f"{ins[0]}[((b * {c} + ch) * {h} + y * {sh} + i * {dh}) * {w} + x * {sw} + j * {dw}];"]


def _take(gen, node, ins, out) -> list:
    x, idx = node.inputs
    axis = node.attr_dict["axis"]
    outer, size = math.prod(x.shape[:axis]), x.shape[axis]
    inner = math.prod(x.shape[axis + 1:]) * x.dtype.itemsize
    count = math.prod(idx.shape)
    before, after = _bounds_message(node, "take",
                                    f"index {{}} is out of bounds for dimension {axis} "
                                    f"with size {size}")
    return [f"for (int64_t o = 0; o < {outer}; o++)",
            f"for (int64_t t = 0; t < {count}; t++) {{",
            f"    int64_t ix = (int64_t){ins[1]}[t];",
            f"    if (ix < -{size} || ix >= {size}) return kiln_fail_at({before}, ix, {after});",
            f"    if (ix < 0) ix += {size};",
            f"    memcpy((char *){out} + (o * {count} + t) * {inner}, "
            f"(const char *){ins[0]} + (o * {size} + ix) * {inner}, {inner});",
            "}"]


def _cat(gen, node, ins, out) -> list:
    axis = node.attr_dict["axis"]
    shape = node.out.shape
    outer = math.prod(shape[:axis])
    size = node.out.dtype.itemsize
    row = math.prod(shape[axis:]) * size
    lines = [f"for (int64_t o = 0; o < {outer}; o++) {{", "    int64_t at = o * " + str(row) + ";"]
    for v, e in zip(node.inputs, ins):
        chunk = math.prod(v.shape[axis:]) * size
        lines += [f"    memcpy((char *){out} + at, (const char *){e} + o * {chunk}, {chunk});",
                  f"    at += {chunk};"]
    return lines + ["}"]


def _check_index(gen, node, ins, out) -> list:
    """kiln's bounds check (kiln.ir.ops check_index): copy the indices, failing on one outside
    [0 or -size, size) that is not the ignored value."""
    a = node.attr_dict
    low = -a["size"] if a["negative"] else 0
    skip = f"ix != {int(a['ignore'])} && " if a["ignore"] is not None else ""
    before, after = _bounds_message(node, a["op"], a["message"])
    return [f"for (int64_t t = 0; t < {math.prod(node.out.shape)}; t++) {{",
            f"    int64_t ix = (int64_t){ins[0]}[t];",
            f"    if ({skip}(ix < {low} || ix >= {a['size']})) "
            f"return kiln_fail_at({before}, ix, {after});",
            f"    {out}[t] = {ins[0]}[t];",
            "}"]


def _check_values(gen, node, ins, out) -> list:
    """kiln's value check (kiln.ir.ops check_values): copy the values, failing at the first
    whose condition is false, with that value in the message as eager code puts it."""
    a = node.attr_dict
    before, after = _bounds_message(node, a["op"], a["message"])
    x = node.inputs[0]
    if "{}" not in a["message"]:
        fail = f"kiln_fail({_c_string(a['op'] + ': ' + a['message'])} {after})"
    elif x.dtype.is_floating_point:
        fail = f"kiln_fail_at_real({before}, (double){ins[0]}[t], {after})"
    else:
        fail = f"kiln_fail_at({before}, (int64_t){ins[0]}[t], {after})"
    return [f"for (int64_t t = 0; t < {math.prod(node.out.shape)}; t++) {{",
            f"    if (!{ins[1]}[t]) return {fail};",
            f"    {out}[t] = {ins[0]}[t];",
            "}"]


def _bounds_message(node, op: str, message: str) -> tuple:
    """C string literals for the text before and after the offending value (`{}` in
    `message`) of a failed bounds check: the words kiln's eager error uses, and the line."""
    before, _, after = message.partition("{}")
    return _c_string(f"{op}: {before}"), _c_string(f"{after} (at {_short(node.loc)})")


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_EXTERNS = {"matmul": _matmul, "pad": _pad, "unfold": _unfold, "take": _take, "cat": _cat,
            "check_index": _check_index, "check_values": _check_values}


_SUPPORT = r"""
#include <stdio.h>
#include <stdlib.h>
#ifdef KILN_USE_CBLAS
#include <cblas.h>
#endif

typedef struct kiln_model kiln_model;
static __thread const char *kiln_last_error = "";

static __thread char kiln_error_text[512];

static int kiln_fail(const char *why) { kiln_last_error = why; return 1; }

/* a failed bounds check: its words around the offending value */
static int kiln_fail_at(const char *before, int64_t value, const char *after) {
    snprintf(kiln_error_text, sizeof kiln_error_text, "%s%lld%s", before, (long long)value,
             after);
    kiln_last_error = kiln_error_text;
    return 1;
}
/* a failed value check: its words around the offending (floating-point) value */
static int kiln_fail_at_real(const char *before, double value, const char *after) {
    snprintf(kiln_error_text, sizeof kiln_error_text, "%s%g%s", before, value, after);
    kiln_last_error = kiln_error_text;
    return 1;
}
const char *kiln_model_error(void) { return kiln_last_error; }

static void *kiln_alloc(uint64_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 1) != 0) return NULL;
    memset(p, 0, bytes);
    return p;
}

/* c[m,n] = a[m,k] @ b[k,n], row-major */
static void kiln_gemm_f32(int64_t m, int64_t n, int64_t k, const float *a, const float *b,
                          float *c) {
#ifdef KILN_USE_CBLAS
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, n, 0.0f, c, n);
#else
    for (int64_t i = 0; i < m; i++) {
        float *row = c + i * n;
        for (int64_t j = 0; j < n; j++) row[j] = 0;
        for (int64_t p = 0; p < k; p++) {
            const float s = a[i * k + p], *bp = b + p * n;
            for (int64_t j = 0; j < n; j++) row[j] += s * bp[j];
        }
    }
#endif
}

static void kiln_gemm_f64(int64_t m, int64_t n, int64_t k, const double *a, const double *b,
                          double *c) {
#ifdef KILN_USE_CBLAS
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0, a, k, b, n, 0.0, c, n);
#else
    for (int64_t i = 0; i < m; i++) {
        double *row = c + i * n;
        for (int64_t j = 0; j < n; j++) row[j] = 0;
        for (int64_t p = 0; p < k; p++) {
            const double s = a[i * k + p], *bp = b + p * n;
            for (int64_t j = 0; j < n; j++) row[j] += s * bp[j];
        }
    }
#endif
}

/* copy a contiguous block of `shape` into dst, whose dims are `dst_strides` bytes apart */
static void kiln_copy_block(const char *src, char *dst, int ndim, const int64_t *shape,
                            const int64_t *dst_strides, int64_t itemsize) {
    int64_t rows = 1, idx[16] = {0};
    for (int d = 0; d < ndim - 1; d++) rows *= shape[d];
    const int64_t row = shape[ndim - 1] * itemsize;
    for (int64_t r = 0; r < rows; r++) {
        int64_t off = 0;
        for (int d = 0; d < ndim - 1; d++) off += idx[d] * dst_strides[d];
        memcpy(dst + off, src + r * row, row);
        for (int d = ndim - 2; d >= 0; d--) {
            if (++idx[d] < shape[d]) break;
            idx[d] = 0;
        }
    }
}

/* the weights file: "KILNWTS1", count, byte size per array, then the arrays 64-byte aligned */
static int kiln_read_weights(const char *path, int count, const uint64_t *bytes, void **block,
                             void **arrays) {
    FILE *f = fopen(path, "rb");
    if (!f) return kiln_fail("kiln_model_load: cannot open the weights file");
    char magic[8];
    uint64_t n = 0, total = 0, head = 16 + 8 * (uint64_t)count;
    head += (64 - head % 64) % 64;
    if (fread(magic, 1, 8, f) != 8 || memcmp(magic, "KILNWTS1", 8) != 0 ||
        fread(&n, 8, 1, f) != 1 || n != (uint64_t)count) {
        fclose(f);
        return kiln_fail("kiln_model_load: not a weights file of this model (bad magic or count)");
    }
    for (int i = 0; i < count; i++) {
        uint64_t b = 0;
        if (fread(&b, 8, 1, f) != 1 || b != bytes[i]) {
            fclose(f);
            return kiln_fail("kiln_model_load: the weights file's array sizes differ from "
                             "this model's");
        }
        total += b + (64 - b % 64) % 64;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (uint64_t)ftell(f) != head + total ||
        fseek(f, (long)head, SEEK_SET) != 0) {
        fclose(f);
        return kiln_fail("kiln_model_load: the weights file is truncated or has extra bytes");
    }
    *block = kiln_alloc(total);
    if (!*block) { fclose(f); return kiln_fail("out of memory"); }
    if (total && fread(*block, 1, total, f) != total) {
        fclose(f);
        free(*block);
        return kiln_fail("kiln_model_load: reading the weights file failed");
    }
    fclose(f);
    uint64_t at = 0;
    for (int i = 0; i < count; i++) {
        arrays[i] = (char *)*block + at;
        at += bytes[i] + (64 - bytes[i] % 64) % 64;
    }
    return 0;
}
"""


def _ctype(d) -> str:
    from kiln.codegen.c import storage_type
    return storage_type(d)


def _c_literal(x, d) -> str:
    if d.is_floating_point:
        if math.isnan(x):
            return "NAN"
        if math.isinf(x):
            return "INFINITY" if x > 0 else "-INFINITY"
        return repr(float(x)) + ("f" if d is dt.float32 else "")
    return str(int(x))


def _short(loc: str) -> str:
    path, _, line = loc.rpartition(":")
    return f"{os.path.basename(path)}:{line}" if path else loc


def _indent(lines: list) -> str:
    return "\n".join("    " + x for x in lines)
