"""Where a step stops being finite: the first op of the reference interpreter whose result
holds NaN or inf while its operands are finite.

    stages = Stages.of(program.stages)               # the step IR after each pass
    finding = first_non_finite(stages, inputs)       # inputs keyed as `stepc exec`'s .npz
    if finding is not None:
        raise StepcError(f"step 3: {finding.message()}", finding.loc)

The step is re-run in three programs, in the order its values are born, so that the first
op found also says what kind of value it made:

1. the program as written (`forward`), once per micro-batch: an op found here is a forward
   value (`sqrt` of a negative number, `exp` overflowing);
2. the program after `seed-scalar-loss` (`grad`: the forward ops again, then the backward
   ops `differentiate` made), once per micro-batch: the forward part is the same computation
   as in 1, so an op found here is a derivative. Every op `differentiate` creates carries the
   location of the forward op it comes from, so the finding points at the line of the op
   differentiated (`sqrt` at exactly 0: a finite forward value, an infinite derivative);
3. the whole step (`step`, after the optimizer's pass): forward and backward are finite by
   now, so an op found here belongs to the optimizer's update (located at its parameter).

An op whose operand is already not finite only carries the fault on, and a constant is what
the user wrote (a `-inf` mask): neither is where a value *stops* being finite. Values that
are not finite at the start of the step (a parameter holding inf) are reported as such.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from xdsl.dialects.builtin import ModuleOp
from xdsl.interpreter import Interpreter, PythonValues
from xdsl.ir import Operation

from stepc.ir.diagnostics import SourceLoc, location_of
from stepc.ir.dialect import ConstantOp
from stepc.ir.interpreter import run_function
from stepc.ir.program import Arg, Form, Role, arg_location, args, program_form, step_function
from stepc.ir.stablehlo import is_lowered

FORWARD = "forward"
DERIVATIVE = "derivative"
UPDATE = "update"
INPUT = "input"
ACCUMULATE_GRADIENTS = "accumulate-gradients"


@dataclass(frozen=True)
class Stages:
    """The step IR programs a fault is looked for in (any may be missing: a pipeline cut by
    `--until` has no step program)."""

    forward: ModuleOp | None
    grad: ModuleOp | None  # loss and gradients (or a cotangent's VJP) of one micro-batch
    step: ModuleOp | None  # the whole step before lowering

    @staticmethod
    def of(stages: Sequence[tuple[str, ModuleOp]]) -> Stages:
        """From `(pass name, program after it)` in pipeline order, the input first (as
        `stepc.api.Program.stages` holds them)."""
        forward = grad = step = None
        accumulated = False
        for index, (name, module) in enumerate(stages):
            if is_lowered(module):
                break
            form = program_form(module)
            accumulated = accumulated or name == ACCUMULATE_GRADIENTS
            if index == 0 and form == Form.FORWARD:
                forward = module
            elif form in (Form.GRAD, Form.VJP) and not accumulated:
                grad = module  # before accumulate-gradients: one micro-batch, unstacked
            elif form == Form.STEP:
                step = module
        return Stages(forward, grad, step)


@dataclass(frozen=True)
class Finding:
    """The first value of a step that is not finite, and where it was born."""

    kind: str  # FORWARD, DERIVATIVE, UPDATE or INPUT
    op_name: str  # the op that made it (`step.div`), or the argument's name for INPUT
    subject: str  # the forward op (FORWARD), the op differentiated (DERIVATIVE), the parameter (UPDATE, INPUT)
    loc: SourceLoc | None
    index: tuple[int, ...]
    value: float
    operands: tuple[float, ...] = ()  # the operands at `index`, where they broadcast to the result
    forward_value: float | None = None  # DERIVATIVE: the forward op's result at `index`
    micro_batch: int | None = None  # with `step.accumulate`: which micro-batch of the step

    def message(self) -> str:
        """What was found, for a message that says which step first (`step 3: ...`)."""
        at = f"{self.value} at {list(self.index)}"
        micro = f" (micro-batch {self.micro_batch})" if self.micro_batch is not None else ""
        if self.kind == FORWARD:
            return f"{self.subject} gives {at}{micro}{_from(self.operands)}: the forward value stops being finite here"
        if self.kind == DERIVATIVE:
            rule = f" ({self.op_name} of its derivative rule)" if self.op_name != self.subject else ""
            forward = (f" where the forward value {self.forward_value} is finite" if self.forward_value is not None
                       else " where every forward value is finite")  # fmt: skip
            return f"the derivative of {self.subject} gives {at}{micro}{rule}{forward}: the derivative stops being finite here"
        if self.kind == UPDATE:
            return (f"the optimizer's update of {self.subject} gives {at} ({self.op_name}) from finite gradients: "
                    "the updated parameter stops being finite here")  # fmt: skip
        return f"{self.subject} holds {at} when the step starts"


def _from(operands: tuple[float, ...]) -> str:
    if not operands:
        return ""
    return f" from the finite operand{'s' if len(operands) > 1 else ''} {', '.join(repr(v) for v in operands)}"


class _Found(Exception):
    def __init__(self, op: Operation, result: np.ndarray, operands: PythonValues):
        super().__init__(op.name)
        self.op, self.result, self.operands = op, result, operands


def _is_float(a: np.ndarray) -> bool:
    return a.dtype.kind == "f" or a.dtype.name == "bfloat16"


def _non_finite(a: np.ndarray) -> np.ndarray:
    """A mask of the elements of a float array that are NaN or inf (bf16 through f32)."""
    return ~np.isfinite(a.astype(np.float32) if a.dtype.name == "bfloat16" else a)


class _FirstNonFinite(Interpreter.Listener):
    """Stops the run (raising `_Found`) at the first op whose float result is not finite while
    its float operands are; constants (`-inf` masks) never count. Region ops (`step.accumulate`)
    see their body's ops first, so the operands are kept as a stack."""

    def __init__(self, record: dict[SourceLoc, np.ndarray] | None = None):
        self.operands: list[PythonValues] = []
        self.record = record  # each op's first result by location (the forward values), when given

    def will_interpret_op(self, op: Operation, args: PythonValues) -> None:
        self.operands.append(args)

    def did_interpret_op(self, op: Operation, results: PythonValues) -> None:
        operands = self.operands.pop()
        if self.record is not None and results:
            loc = location_of(op)
            if loc is not None:
                self.record.setdefault(loc, np.asarray(results[0]))
        if isinstance(op, ConstantOp):
            return
        for result in results:
            a = np.asarray(result)
            if not _is_float(a) or not _non_finite(a).any():
                continue
            if all(not _non_finite(np.asarray(v)).any() for v in operands if _is_float(np.asarray(v))):
                raise _Found(op, a, operands)


def first_non_finite(stages: Stages, inputs: Mapping[str, Any]) -> Finding | None:
    """The first value of the step on `inputs` that is not finite (see the module's
    docstring), or None when the reference interpreter finds every value finite.

    `inputs` are keyed as `stepc exec`'s: arguments by IR name, state by its key; with
    `step.accumulate = K` the batch inputs carry their leading axis of K (the forward and
    gradient programs then run once per micro-batch)."""
    for module in (stages.step, stages.grad, stages.forward):
        if module is not None:
            found = _non_finite_argument(module, inputs)
            if found is not None:
                return found
            break
    forward_values: dict[int | None, dict[SourceLoc, np.ndarray]] = {}
    forward_ops: dict[SourceLoc, str] = {}
    if stages.forward is not None:
        forward_ops = {loc: op.name for op in step_function(stages.forward).walk() if (loc := location_of(op))}
        for k, micro in _micro_batches(stages.forward, inputs):
            forward_values[k] = {}
            found = _run(stages.forward, micro, forward_values[k])
            if found is not None:
                return _finding(FORWARD, found, found.op.name, k)
    if stages.grad is not None:
        for k, micro in _micro_batches(stages.grad, inputs):
            found = _run(stages.grad, micro)
            if found is not None:
                loc = location_of(found.op)
                subject = forward_ops.get(loc, found.op.name) if loc is not None else found.op.name
                forward = forward_values.get(k, {}).get(loc) if loc is not None else None
                return _finding(DERIVATIVE, found, subject, k, forward)
    if stages.step is not None:
        found = _run(stages.step, _named(stages.step, inputs))
        if found is not None:
            loc = location_of(found.op)
            fn = step_function(stages.step)
            owners = {arg_location(fn, a.value): a.name for a in args(fn) if a.role == Role.PARAM}
            subject = f"%{owners[loc]}" if loc in owners else "the parameters"
            return _finding(UPDATE, found, subject, None)
    return None


def _run(module: ModuleOp, named: dict[str, np.ndarray], record: dict[SourceLoc, np.ndarray] | None = None) -> _Found | None:
    try:
        run_function(module, named, listeners=(_FirstNonFinite(record),))
    except _Found as found:
        return found
    return None


def _finding(kind: str, found: _Found, subject: str, micro_batch: int | None,
             forward: np.ndarray | None = None) -> Finding:  # fmt: skip
    result = found.result
    flat = int(np.flatnonzero(_non_finite(result).reshape(-1))[0])
    index = tuple(int(i) for i in np.unravel_index(flat, result.shape)) if result.ndim else ()
    operands: list[float] = []
    for value in found.operands:
        a = np.asarray(value)
        if not _is_float(a):
            continue
        try:
            operands.append(float(np.broadcast_to(a, result.shape)[index]))
        except ValueError:  # not elementwise (a matmul's operands): no value to show
            operands = []
            break
    forward_value = None
    if forward is not None and forward.shape == result.shape:
        forward_value = float(forward[index])
    return Finding(kind, found.op.name, subject, location_of(found.op), index, float(result[index]),
                   tuple(operands), forward_value, micro_batch)  # fmt: skip


def _key(arg: Arg) -> str:
    return arg.state_key or arg.name


def _named(module: ModuleOp, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """`inputs` (keyed as `stepc exec`'s) by the argument names of `module`'s function; a
    cotangent left out is 1 (the seed of a scalar loss)."""
    out: dict[str, np.ndarray] = {}
    for arg in args(step_function(module)):
        key = _key(arg)
        if key in inputs:
            out[arg.name] = np.asarray(inputs[key])
        elif arg.role == Role.COTANGENT:
            out[arg.name] = np.ones(tuple(arg.type.get_shape()))
    return out


def _micro_batches(module: ModuleOp, inputs: Mapping[str, Any]) -> list[tuple[int | None, dict[str, np.ndarray]]]:
    """The inputs of `module` (written for one micro-batch) for each micro-batch: a batch input
    given with one more leading axis than its argument is sliced along it; (None, inputs) when
    none is."""
    named = _named(module, inputs)
    fn_args = args(step_function(module))
    stacked = [a.name for a in fn_args
               if a.name in named and named[a.name].shape[1:] == tuple(a.type.get_shape())
               and named[a.name].ndim == len(a.type.get_shape()) + 1]  # fmt: skip
    if not stacked:
        return [(None, named)]
    count = named[stacked[0]].shape[0]
    return [(k, {n: (v[k] if n in stacked else v) for n, v in named.items()}) for k in range(count)]


def _non_finite_argument(module: ModuleOp, inputs: Mapping[str, Any]) -> Finding | None:
    """A parameter, state or batch value that is not finite before the step runs."""
    fn = step_function(module)
    for arg in args(fn):
        value = inputs.get(_key(arg))
        if value is None:
            continue
        a = np.asarray(value)
        if _is_float(a) and _non_finite(a).any():
            flat = int(np.flatnonzero(_non_finite(a).reshape(-1))[0])
            index = tuple(int(i) for i in np.unravel_index(flat, a.shape)) if a.ndim else ()
            what = {Role.PARAM: "the parameter", Role.STATE: "the optimizer state"}.get(arg.role, "the input")
            return Finding(INPUT, arg.name, f"{what} %{arg.name}", arg_location(fn, arg.value), index,
                           float(a.reshape(-1)[flat]))  # fmt: skip
    return None
