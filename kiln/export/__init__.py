"""`kiln.export`: models as self-contained inference programs, saved, reloaded and compiled.

`export(model, args, kwargs=None, *, dynamic_shapes=None)` traces the model into an
`ExportedProgram` (graph, weights, input/output specs, guards); `ExportedProgram.save(path)` and
`load(path)` move it through one checkpoint-format file; `kiln.export.c_library` builds it into
a C shared library that runs without Python, and `kiln.onnx.export` writes it as ONNX. torch's
descriptions of a program (graph_signature, ShapesCollection) are in `signature`, its FX view
in `fx_view`, `unflatten` in `unflatten`.
"""

from kiln.export.program import ExportedProgram, TensorSpec, export, load  # noqa: F401
from kiln.export.program import Dim, save  # noqa: F401  (torch.export.Dim, torch.export.save)
from kiln.export.symbolic import Affine  # noqa: F401
from kiln.export.c_library import CLibrary, build_c_library  # noqa: F401
from kiln.export.signature import (ExportGraphSignature, InputKind, InputSpec,  # noqa: F401
                                   OutputKind, OutputSpec, ShapesCollection, TensorArgument)
from kiln.export.unflatten import unflatten  # noqa: F401

__all__ = ["Affine", "CLibrary", "Dim", "ExportedProgram", "TensorSpec", "build_c_library",
           "export", "load", "save", "ExportGraphSignature", "InputKind", "InputSpec",
           "OutputKind", "OutputSpec", "ShapesCollection", "TensorArgument",
           "unflatten"]
