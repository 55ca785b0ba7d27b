"""The one list of PyTorch public names kiln deliberately does not provide, each with its reason.

`tests/test_api_coverage.py` measures, per namespace, how many of torch's public names kiln has;
a name listed here is left out of the count. A name belongs here only when a typical training or
inference script would not use it (a backend's kernel, an internal of the JIT, quantization,
sparse layouts, a dtype kiln does not have), never to reach a target: a missing feature a script
could use (autocast, nn.Transformer) is counted as missing instead.

Keys are qualified the way a user spells them: "torch.name", "torch.Tensor.name",
"torch.nn.name", "torch.linalg.name", ...
"""

from __future__ import annotations

EXCLUDED: dict[str, str] = {}


def _group(namespace: str, reason: str, names: str) -> None:
    for name in names.split():
        key = f"{namespace}.{name}"
        assert key not in EXCLUDED, f"{key} listed twice"
        EXCLUDED[key] = reason


JIT = "TorchScript/JIT internals (kiln compiles with @kiln.compile, not TorchScript)"
_group("torch", JIT, """
AliasDb AnyType Argument ArgumentSpec AwaitType Block BoolType CallStack Capsule ClassType Code
CompilationUnit CompleteArgumentSpec ConcreteModuleType ConcreteModuleTypeBuilder DeepCopyMemoTable
DeviceObjType DictType EnumType ErrorReport ExecutionPlan FileCheck FloatType FunctionSchema
Future FutureType Gradient Graph GraphExecutorState InferredType IntType InterfaceType
JITException ListType LiteScriptModule NoneType NumberType OperatorInfo OptionalType
PyObjectType RRefType ScriptClass ScriptClassFunction ScriptDict ScriptDictIterator
ScriptDictKeyIterator ScriptFunction ScriptList ScriptListIterator ScriptMethod ScriptModule
ScriptModuleSerializer ScriptObject ScriptObjectProperty StaticModule StreamObjType StringType
SymBoolType SymIntType TensorType TracingState TupleType Type UnionType Use Value Node
import_ir_module import_ir_module_from_buffer parse_ir parse_schema parse_type_comment
merge_type_from_type_comment unify_type_list fork wait AggregationType LockingLogger LoggerBase
NoopLogger ThroughputBenchmark BenchmarkConfig BenchmarkExecutionStats IODescriptor
""")
_group("torch", "symbolic-shape internals of torch.compile/export (SymInt tracing)", """
SymBool SymFloat SymInt sym_constrain_range sym_constrain_range_for_size sym_float
sym_fresh_size sym_int sym_ite sym_max sym_min sym_not sym_sqrt sym_sum
""")
_group("torch", "dispatcher internals (__torch_function__ / dispatch keys / op tags)", """
DispatchKey DispatchKeySet ExcludeDispatchKeyGuard Tag classproperty
""")
STORAGE = "storage objects and raw memory (a kiln tensor owns a NumPy/CuPy array, no Storage)"
_group("torch", STORAGE, """
BFloat16Storage BoolStorage ByteStorage CharStorage ComplexDoubleStorage ComplexFloatStorage
DoubleStorage FloatStorage HalfStorage IntStorage LongStorage ShortStorage Storage StorageBase
from_file
PyTorchFileReader PyTorchFileWriter SerializationStorageContext DeserializationStorageContext
get_file_path
""")
QUANT = ("quantized kernels kiln does not have (kiln's quantization is the eager torch.ao "
         "workflow: kiln.tracer.quantized and kiln.ao)")
_group("torch", QUANT, """
QInt32Storage QInt8Storage QUInt2x4Storage QUInt4x2Storage QUInt8Storage
choose_qparams_optimized empty_quantized fused_moving_avg_obs_fake_quant
quantize_per_tensor_dynamic quantized_batch_norm quantized_gru
quantized_gru_cell quantized_lstm quantized_lstm_cell quantized_max_pool1d quantized_max_pool2d
quantized_max_pool3d quantized_rnn_relu_cell quantized_rnn_tanh_cell
""")
BACKEND = "a vendor library's kernel entry point (cuDNN/MIOpen/oneDNN/FBGEMM/Vulkan), not user API"
_group("torch", BACKEND, """
cudnn_affine_grid_generator cudnn_batch_norm cudnn_convolution cudnn_convolution_add_relu
cudnn_convolution_relu cudnn_convolution_transpose cudnn_grid_sampler cudnn_is_acceptable
miopen_batch_norm miopen_convolution miopen_convolution_add_relu miopen_convolution_relu
miopen_convolution_transpose miopen_ctc_loss miopen_depthwise_convolution miopen_rnn
mkldnn_adaptive_avg_pool2d mkldnn_convolution mkldnn_linear_backward_weights mkldnn_max_pool2d
mkldnn_max_pool3d mkldnn_rnn_layer fbgemm_linear_fp16_weight
fbgemm_linear_fp16_weight_fp32_activation fbgemm_linear_int8_weight
fbgemm_linear_int8_weight_fp32_activation fbgemm_linear_quantize_weight
fbgemm_pack_gemm_matrix_fp16 fbgemm_pack_quantized_matrix is_vulkan_available
""")
ATEN = "an ATen kernel behind an nn module or functional (scripts call the module/functional)"
_group("torch", ATEN, """
native_batch_norm native_channel_shuffle native_dropout native_group_norm native_layer_norm
native_norm batch_norm_backward_elemt batch_norm_backward_reduce batch_norm_elemt
batch_norm_gather_stats batch_norm_gather_stats_with_counts batch_norm_stats
batch_norm_update_stats lstm lstm_cell gru gru_cell rnn_relu rnn_relu_cell rnn_tanh
rnn_tanh_cell convolution conv_tbc affine_grid_generator
embedding_renorm_ norm_except_dim
feature_dropout feature_dropout_ feature_alpha_dropout_ alpha_dropout_ slice_inverse
embedding_bag
""")
_group("torch", "a C++ binding of TorchScript's module internals (pybind object with only "
       "contains/getattr/items/setattr), not a Python API", "BufferDict")
COPY = "functionalization's *_copy twin of a view op (the view op itself is provided)"
_group("torch", COPY, """
ccol_indices_copy col_indices_copy crow_indices_copy indices_copy row_indices_copy values_copy
view_as_complex_copy view_as_real_copy
""")
SPARSE = ("block sparse layouts (BSR/BSC), and sparse-only operations (COO, CSR and CSC "
          "tensors, to_sparse*, spmm and torch.sparse.mm are provided)")
_group("torch", SPARSE, """
sparse_bsc_tensor sparse_bsr_tensor dsmm hsmm hspmm smm sspaddmm saddmm resize_as_sparse_
""")
STRIDES = ("user-set strides beyond a view of a contiguous tensor (kiln has as_strided on "
           "those, and empty_strided)")
_group("torch", STRIDES, """
as_strided_ empty_permuted
""")
COMPLEX = "kiln has no complex32 (chalf): NumPy has no half-precision complex type"
_group("torch", "autocast's internal bookkeeping (the counted API is torch.autocast)", """
autocast_decrement_nesting autocast_increment_nesting get_autocast_ipu_dtype
get_autocast_xla_dtype is_autocast_ipu_enabled is_autocast_xla_enabled set_autocast_ipu_dtype
set_autocast_ipu_enabled set_autocast_xla_dtype set_autocast_xla_enabled
""")
_group("torch", "build/process internals of the PyTorch binary", """
compiled_with_cxx11_abi prepare_multiprocessing_environment
profiler_allow_cudagraph_cupti_lazy_reinit_cuda12 init_num_threads is_distributed
get_device_module thread_safe_generator
""")
_group("torch", JIT, "ComplexType")
REMOVED = "removed from PyTorch: calling it raises there, pointing to torch.linalg"
_group("torch", REMOVED, "symeig eig lstsq matrix_rank solve")
_group("torch.Tensor", REMOVED, "symeig eig lstsq solve")
_group("torch", "LOBPCG eigensolver (iterative, for large sparse problems)", "lobpcg")

# ----------------------------------------------------------------------------- Tensor methods
T = "torch.Tensor"
_group(T, SPARSE + "; the COO ones are SparseTensor's methods, not a dense tensor's", """
coalesce dense_dim indices is_coalesced smm sparse_dim sparse_resize_
sparse_resize_and_clear_ sspaddmm to_sparse_bsc to_sparse_bsr values
resize_as_sparse_
""")
_group(T, STORAGE, """
is_set_to
const_data_ptr
""")
_group(T, STRIDES, """
as_strided_ dim_order
""")
_group(T, "oneDNN layout (a vendor library's tensor format)", "to_mkldnn")
_group(T, "devices kiln does not run on (IPU, XPU, MTIA): no transfer method", "ipu xpu mtia")
_group(T, COMPLEX, "chalf")
_group(T, ATEN, "slice_inverse")
_group(T, "functorch's first-class dimensions (torch.Tensor.index binds Dim objects)", "index")
_group(T, "distributed-tensor internals of the PyTorch build", "is_distributed")
_group(T, "legacy autograd.Variable leftovers (removed semantics)", "reinforce volatile")
_group(T, "internals of torch's own machinery (subclassing, nn.Module.load_state_dict "
       "assign hooks, dtype of a grad override, output index of an autograd node)", """
grad_dtype output_nr name
""")
_group(T, "a CPU-only Python callback on three tensors per element (apply_ and map_ are provided)",
       "map2_")

# ----------------------------------------------------------------------------- submodules
_group("torch.linalg", "docstring helper string, not an API", "common_notes")
_group("torch.fft", "docstring helper string, not an API", "common_args factory_common_args")
_group("torch.special", "docstring helper string, not an API", "common_args multi_dim_common")
_group("torch.autograd", "profiler/C++ engine internals (torch.autograd.profiler)", """
DeviceType ProfilerActivity ProfilerConfig ProfilerEvent ProfilerState kineto_available
SavedTensor enforce_grad_layout_policy is_multithreading_enabled set_multithreading_enabled
is_view_replay_enabled NestedIOFunction
""")
_group("torch.autograd", "typing helpers of torch's own code", """
overload cast
""")
_group("torch.autograd.graph", "dispatcher, CUDA-stream and torch.compile memory-budget "
       "internals", """
set_override_stale_capture_stream set_warn_on_accumulate_grad_stream_mismatch
region_activation_memory_budget
""")

# nn-ish namespaces: names that are internals or need features kiln does not have
_group("torch.nn", "legacy Lua-torch leftovers", "Container")
_group("torch.nn.functional", "__torch_function__ dispatch internals", """
boolean_dispatch assert_int_or_pair
""")
_group("torch.nn.functional", "low-precision GEMM entry points for FP8/grouped experts (CUDA "
       "only)", "ScalingType SwizzleType grouped_mm scaled_grouped_mm scaled_mm")
_group("torch.optim", "internal helper of torch's optimizer state swapping",
       "swap_in_optimizer_params_and_state")
_group("torch.utils.data", "DataPipes: the deprecated torchdata graph API", """
DFIterDataPipe IterDataPipe MapDataPipe DataChunk functional_datapipe
guaranteed_datapipes_determinism non_deterministic runtime_validation
runtime_validation_disabled argument_validation
""")
_group("torch.nn.utils.rnn", "internal helpers of PackedSequence",
       "bind copy_method_params PackedSequence_")
TYPING = "a name from the typing module that the torch module happens to import, not API"
_group("torch.nn.functional", TYPING, "Optional")
_group("torch.nn.init", TYPING, "Literal")
_group("torch.nn.utils.rnn", TYPING, "Self")
_group("torch.autograd.graph", TYPING, "Literal Optional TypeAlias Union")
_group("torch.nn.attention.flex_attention", TYPING + " (or torch.utils._pytree)", """
GetAttrKey Literal Never NotRequired Self TreeSpec TypeAlias TypedDict tree_flatten
tree_map_only tree_unflatten
""")
_group("torch.nn.attention.flex_attention", "torch.compile internals of flex_attention (its "
       "higher-order op and compile environment)", "flex_attention_hop setup_compilation_env")
