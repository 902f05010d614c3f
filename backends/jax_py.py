"""`--emit jax-py`: a readable, standalone Python module that needs only JAX and NumPy.

The module holds each program as one straight-line function of `jax.lax` calls, rendered
from the same `Call` descriptions the JAX backend evaluates (`backends/jax.py`), and the
API's functions around it, dicts keyed by IR names:

| the program given is | the module offers |
| --- | --- |
| the whole pipeline (the optimizer's pass, `fuse-sgd` or `fuse-adam`, ran) | `init_state(params)`, `step(params, state, batch)`, and `grad`, `forward` |
| after `seed-scalar-loss` | `grad(params, batch)`, and `forward` |
| the input | `forward(params, batch)` |
| any | `run(inputs) -> outputs`, the program given, keys as `stepc exec` |

The caller (`stepc compile --emit jax-py`) hands in every lowered program the module offers,
keyed by form: `grad` and `forward` beside a later program are compiled again from the source
file (no contracts), when it can be read.

No IR name ever becomes code: names appear only as `ascii()` string literals, Python names
are generated (`a0`, `v12`), and the one comment naming the source is reduced to printable
ASCII on one line.
"""

from __future__ import annotations

import ast
import inspect
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from stepc.backends import helpers
from stepc.backends.jax import Body, Call, Function, Name, Operand, Starred, jax_function, straight_line
from stepc.ir.program import STATE_INITIAL_VALUES, step_function

DTYPE_NAMES = {
    "float16": "jnp.float16",
    "bfloat16": "jnp.bfloat16",
    "float32": "jnp.float32",
    "float64": "jnp.float64",
    "int32": "jnp.int32",
    "uint32": "jnp.uint32",
    "bool": "jnp.bool_",
}


# ---------------------------------------------------------------------------------------------
# Literals


def literal(value: Any, operands: Sequence[str] | Mapping[int, str], functions: Mapping[int, str] | None = None) -> str:
    """Python source for one argument of a `Call` (a `Function` by the name of its `def`, from
    `functions`, keyed by the Function's id)."""
    if isinstance(value, Operand):
        return operands[value.index]
    if isinstance(value, Name):
        return value.path
    if isinstance(value, Function):
        assert functions is not None, "a Function is rendered by its def's name"
        return functions[id(value)]
    if isinstance(value, Starred):
        return "*" + literal(value.value, operands, functions)
    if isinstance(value, Call):
        parts = [literal(a, operands, functions) for a in value.args]
        parts += [f"{key}={literal(v, operands, functions)}" for key, v in value.kwargs]
        return f"{value.fn}({', '.join(parts)})"
    if isinstance(value, tuple):
        items = [literal(v, operands, functions) for v in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if isinstance(value, np.ndarray):
        return array_literal(value)
    if isinstance(value, np.dtype):
        return DTYPE_NAMES[value.name]
    if isinstance(value, (bool, int)):
        return repr(value)
    if isinstance(value, float):
        return float_literal(value)
    if isinstance(value, str):
        return ascii(value)
    raise TypeError(f"no Python literal for {type(value).__name__}")


def float_literal(x: float) -> str:
    if math.isnan(x):
        return "float('nan')"
    if math.isinf(x):
        return "float('inf')" if x > 0 else "-float('inf')"
    return repr(float(x))


def array_literal(array: np.ndarray) -> str:
    """An exact NumPy constant: a splat as `np.full`, else the values row-major."""
    dtype = DTYPE_NAMES[array.dtype.name]
    shape = literal(tuple(int(d) for d in array.shape), [])
    flat = array.reshape(-1)
    cast = int if array.dtype.kind in "iub" else float
    if flat.size and np.all((flat == flat[0]) | (np.isnan(flat.astype(np.float64)) & np.isnan(float(flat[0])))):
        value = cast(flat[0])
        return f"np.full({shape}, {literal(value, [])}, dtype={dtype})"
    values = ", ".join(literal(cast(v), []) for v in flat)
    return f"np.array([{values}], dtype={dtype}).reshape({shape})"


def one_line_comment(text: str) -> str:
    """Printable ASCII on one line: safe after a `#`."""
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)


# ---------------------------------------------------------------------------------------------
# One program


def program_source(module: ModuleOp, name: str) -> list[str]:
    """`def _NAME(a0, a1, ...)` of straight-line lax calls, and its argument and output tables."""
    fn = step_function(module)
    jf = jax_function(module)
    lines = function_source(straight_line(fn), f"_{name}", "", iter(range(1 << 62)))
    lines.append("")
    lines.append("")
    specs = [(s.key, str(s.role), s.shape, s.dtype.name) for s in jf.specs]  # a Role's text: "param"
    lines.append(f"{name.upper()}_ARGS = (")
    for key, role, shape, dtype in specs:
        lines.append(f"    ({key!a}, {role!a}, {literal(tuple(shape), [])}, {DTYPE_NAMES[dtype]}),")
    lines.append(")")
    lines.append(f"{name.upper()}_OUTPUTS = {literal(tuple(jf.output_names), [])}")
    lines.append("")
    lines.append("")
    return lines


def function_source(body: Body, name: str, indent: str, numbers: Iterator[int]) -> list[str]:
    """`def NAME(a0, a1, ...):` of a body's lax calls, returning the tuple of its outputs; the
    functions a call takes (a loop's condition and body) are `def`s inside it, before the call,
    each named `f` and a number from `numbers`."""
    slots = {i: f"a{i}" for i in range(body.n_args)}
    for n, ins in enumerate(body.instructions):
        slots.update({slot: f"v{n}" if len(ins.results) == 1 else f"v{n}_{i}" for i, slot in enumerate(ins.results)})
    lines = [f"{indent}def {name}({', '.join(slots[i] for i in range(body.n_args))}):"]
    for ins in body.instructions:
        functions: dict[int, str] = {}
        for function in functions_in(ins.call):
            functions[id(function)] = f"f{next(numbers)}"
            lines += function_source(function.body, functions[id(function)], indent + "    ", numbers)
        call = literal(ins.call, [slots.get(i, "None") for i in ins.operands], functions)  # unread operands are dead
        targets = ", ".join(slots[r] for r in ins.results)
        lines.append(f"{indent}    {targets} = {call}  # {one_line_comment(ins.op.name)}")
    lines.append(f"{indent}    return {literal(tuple(Operand(i) for i in body.outputs), slots)}")
    return lines


def functions_in(node: Any) -> list[Function]:
    """The `Function`s among a call's arguments, in order."""
    if isinstance(node, Function):
        return [node]
    if isinstance(node, Starred):
        return functions_in(node.value)
    if isinstance(node, Call):
        return [f for a in (*node.args, *(v for _, v in node.kwargs)) for f in functions_in(a)]
    if isinstance(node, tuple):
        return [f for v in node for f in functions_in(v)]
    return []


# ---------------------------------------------------------------------------------------------
# The module

RUNTIME = '''
def _arrays(specs, groups):
    """The arrays in argument order, each checked against its key, shape and dtype."""
    arrays = []
    for what, values in groups.items():
        wanted = [key for key, role, _, _ in specs if _GROUP[role] == what]
        missing = [key for key in wanted if key not in values]
        extra = sorted(str(key) for key in values if key not in wanted)
        if missing or extra:
            raise ValueError(f"{what}: missing {missing}, unexpected {extra} (expected keys: {wanted})")
    merged = {key: value for values in groups.values() for key, value in values.items()}
    for key, role, shape, dtype in specs:
        if key not in merged:
            raise ValueError(f"this function takes no {role} argument {key!r}")
        value = merged[key]
        if not hasattr(value, "shape"):
            value = np.asarray(value)
        if tuple(value.shape) != shape:
            raise ValueError(f"{key!r} has shape {tuple(value.shape)}, expected {shape}")
        if np.dtype(value.dtype) != np.dtype(dtype):
            raise ValueError(f"{key!r} has dtype {value.dtype}, expected {np.dtype(dtype)}")
        arrays.append(value)
    return arrays


def _call(program, specs, outputs, groups):
    return dict(zip(outputs, jax.jit(program)(*_arrays(specs, groups))))


_GROUP = {"param": "params", "input": "batch", "state": "state", "cotangent": "inputs", "any": "inputs", "hyper": "batch"}
'''

FORWARD = '''
def forward(params, batch):
    """The loss of the program as written."""
    return _call(_forward, FORWARD_ARGS, FORWARD_OUTPUTS, {"params": params, "batch": batch})["loss"]
'''

GRAD = '''
def grad(params, batch):
    """(loss, grads) as loss.backward() leaves them; grads keyed by parameter name."""
    out = _call(_grad, GRAD_ARGS, GRAD_OUTPUTS, {"params": params, "batch": batch})
    loss = out.pop("loss")
    return loss, {key[len("grad."):]: value for key, value in out.items()}
'''

STEP = '''
STATE_INITIAL_VALUES = {state_initial}


def init_state(params):
    """The state of a first step (momentum buffers at zero, and so on)."""
    _arrays([s for s in STEP_ARGS if s[1] == "param"], {{"params": params}})
    return {{key: jnp.full(shape, STATE_INITIAL_VALUES.get(key, 0.0), dtype=dtype)
            for key, role, shape, dtype in STEP_ARGS if role == "state"}}


def step(params, state, batch):
    """One SGD step: (new params, new state, loss)."""
    out = _call(_step, STEP_ARGS, STEP_OUTPUTS, {{"params": params, "state": state, "batch": batch}})
    loss = out.pop("loss")
    names = [key for key, role, _, _ in STEP_ARGS if role == "param"]
    return {{key: out.pop(key) for key in names}}, out, loss
'''

RUN = '''
def run(inputs):
    """The program given to stepc, dict in and dict out, keyed as `stepc exec` keys its .npz files."""
    specs = [(key, "any", shape, dtype) for key, _, shape, dtype in {upper}_ARGS]
    values = _arrays(specs, {{"inputs": inputs}})
    return {{key: np.asarray(value) for key, value in zip({upper}_OUTPUTS, jax.jit(_{name})(*values))}}
'''


def emit_module(programs: Mapping[str, ModuleOp], given: str, source: str) -> str:
    """The Python module of lowered `programs` keyed by form (`forward`, `grad`, `step`, or
    `program` for any other); `given` is the key of the program compiled, which `run` runs;
    `source` names the file it came from."""
    needs_x64 = any(jax_function(m).needs_x64 for m in programs.values())

    out = [
        f"# Generated by stepc from {one_line_comment(ascii(str(source)))}; it needs only JAX and NumPy.",
        '"""A training step compiled by stepc.',
        "",
        "Functions (dicts keyed by the program's IR names): " + ", ".join(functions_of(programs)) + ".",
        '"""',
        "",
        "import jax",
        "import jax.numpy as jnp",
        "import numpy as np",
        "from jax import lax",
        "",
        "",
    ]
    if needs_x64:
        out += ["jax.config.update('jax_enable_x64', True)  # the program computes in float64", "", ""]
    out += helpers_source().strip("\n").split("\n") + ["", ""]
    for name, program in programs.items():
        out += program_source(program, name)
    out += RUNTIME.strip("\n").split("\n") + ["", ""]
    if "forward" in programs:
        out += FORWARD.strip("\n").split("\n") + ["", ""]
    if "grad" in programs:
        out += GRAD.strip("\n").split("\n") + ["", ""]
    if "step" in programs:
        initial = literal_dict(dict(STATE_INITIAL_VALUES))
        out += STEP.format(state_initial=initial).strip("\n").split("\n") + ["", ""]
    out += RUN.format(name=given, upper=given.upper()).strip("\n").split("\n")
    return "\n".join(out) + "\n"


def helpers_source() -> str:
    """The code of `backends/helpers.py` after its imports (which the emitted module's own header
    makes: `jax` and `lax` only), as `inspect.getsource` reads it."""
    source = inspect.getsource(helpers)
    imports = [node for node in ast.parse(source).body if isinstance(node, (ast.Import, ast.ImportFrom))]
    return "\n".join(source.splitlines()[max(node.end_lineno or node.lineno for node in imports) :]) + "\n"


def literal_dict(values: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k!a}: {float_literal(v)}" for k, v in sorted(values.items())) + "}"


def functions_of(programs: Mapping[str, ModuleOp]) -> list[str]:
    names = []
    if "step" in programs:
        names += ["init_state(params)", "step(params, state, batch)"]
    if "grad" in programs:
        names.append("grad(params, batch)")
    if "forward" in programs:
        names.append("forward(params, batch)")
    names.append("run(inputs)")
    return names
