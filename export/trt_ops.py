"""Is an ONNX graph TensorRT-friendly? Checked here with the onnx tooling alone (TensorRT is not needed).

`TRT_SUPPORTED_OPS` is the set of ONNX operators (default domain) that the ONNX parser of TensorRT 10.x
supports. Source: onnx/onnx-tensorrt, `docs/operators.md` ("Operator Support Matrix", rows marked Y),
release/10.x branch; operators marked N there (e.g. the Sequence* and Optional* ops, ConvInteger,
MatMulInteger, QLinearConv, QLinearMatMul, Det, Unique, StringNormalizer, TfIdfVectorizer, BitShift,
Multinomial, SoftmaxCrossEntropyLoss, NegativeLogLikelihoodLoss, DFT, STFT, ...) are left out, and so are
ops whose support is marked experimental. The list is deliberately conservative: an op missing here fails the
check even where some TensorRT version might accept it, so that a passing graph parses on TensorRT >= 10.0.

Besides the op set, `check_trt_graph` enforces the restrictions of that table that our exporters could
plausibly violate: opset >= 17 (and <= 20, the range TensorRT 10.0 supports), Conv/ConvTranspose weights
that are initializers or constants, Einsum equations without ellipsis, CumSum/Slice/Squeeze/Unsqueeze axes
that are constants, no custom domains. DOUBLE tensors are reported as notes (TensorRT casts them to FLOAT).
"""
from __future__ import annotations

from typing import Dict, List

#: operators of the default ONNX domain supported by the TensorRT 10.x ONNX parser (see module docstring)
TRT_SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add  And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization 
 Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
 DepthToSpace DequantizeLinear Div Dropout  Einsum Elu Equal Erf Exp Expand
EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
Greater GreaterOrEqual GridSample GroupNormalization GRU   HardSigmoid HardSwish 
Identity If InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop
LpNormalization LpPool LRN LSTM MatMul Max MaxPool Mean  Min  Mod Mul Neg
NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear 
 RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN
 Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape  Sigmoid Sign Sin Sinh Size
Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

#: opset range of TensorRT 10.0's ONNX parser; INDIS exports at opset 17
TRT_MIN_OPSET, TRT_MAX_OPSET = 17, 20

_CONST_INPUT = {"Conv": [1], "ConvTranspose": [1], "CumSum": [1], "Slice": [3], "Squeeze": [1], "Unsqueeze": [1]}


def check_trt_graph(model) -> Dict[str, List[str]]:
    """{'errors': [...], 'notes': [...], 'ops': sorted op types}. `model` is an onnx.ModelProto."""
    import onnx

    errors: List[str] = []
    notes: List[str] = []
    opset = None
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = imp.version
        else:
            errors.append(f"custom operator domain {imp.domain!r} (TensorRT needs a plugin for it)")
    if opset is None:
        errors.append("the model imports no default ONNX opset")
    elif not TRT_MIN_OPSET <= opset <= TRT_MAX_OPSET:
        errors.append(f"opset {opset} is outside [{TRT_MIN_OPSET}, {TRT_MAX_OPSET}]")

    graph = model.graph
    consts = {i.name for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            consts.update(n.output)
    ops = sorted({n.op_type for n in graph.node if n.domain in ("", "ai.onnx")})
    for n in graph.node:
        if n.domain not in ("", "ai.onnx"):
            errors.append(f"node {n.name or n.op_type}: op {n.domain}::{n.op_type} is not a standard ONNX op")
            continue
        if n.op_type not in TRT_SUPPORTED_OPS:
            errors.append(f"node {n.name or n.op_type}: op {n.op_type} is not supported by TensorRT's ONNX parser")
        for idx in _CONST_INPUT.get(n.op_type, []):
            if idx < len(n.input) and n.input[idx] and n.input[idx] not in consts:
                errors.append(f"node {n.name or n.op_type}: input {idx} of {n.op_type} must be an initializer/constant for TensorRT")
        if n.op_type == "Einsum":
            eq = next((onnx.helper.get_attribute_value(a) for a in n.attribute if a.name == "equation"), b"")
            eq = eq.decode() if isinstance(eq, bytes) else str(eq)
            if "..." in eq:
                errors.append(f"node {n.name or 'Einsum'}: Einsum with ellipsis ({eq}) is not supported by TensorRT")
            if eq.count(",") > 1:
                errors.append(f"node {n.name or 'Einsum'}: Einsum with more than two inputs ({eq})")
    doubles = [v.name for v in list(graph.input) + list(graph.output) + list(graph.value_info)
               if v.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE]
    doubles += [i.name for i in graph.initializer if i.data_type == onnx.TensorProto.DOUBLE]
    if doubles:
        notes.append(f"{len(doubles)} DOUBLE tensors (TensorRT casts them to FLOAT), e.g. {doubles[:3]}")
    return {"errors": errors, "notes": notes, "ops": ops}
