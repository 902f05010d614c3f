"""`accumulate-gradients`: one update from the mean gradient of K micro-batches.

The function attribute `step.accumulate = K : i64` asks for it. The program is written for
one micro-batch; this pass runs on it after `seed-scalar-loss` (and `canonicalize`), on the
program returning `loss, grad.NAME...` (docs/architecture.md), before `fuse-sgd`:

- every batch input gains a leading axis of K (micro-batch k is `x[k]`);
- the program of one micro-batch becomes the body of a `step.accumulate` over those inputs,
  yielding its loss and gradients: the loop adds each micro-batch's values into one
  accumulator per result (one gradient-sized buffer per parameter, whatever K is);
- each sum is divided by K: the function returns the mean loss and the mean gradients,

as PyTorch's accumulation loop leaves them (`(loss / K).backward()` on each micro-batch, then
`optimizer.step()`: `p.grad` holds the mean of the K micro-batch gradients), and `fuse-sgd`
consumes them unchanged:

    %loss.sum, %grad.w.sum = step.accumulate (%x.micro = %x, %labels.micro = %labels)
        : (tensor<4x16x64xf32>, tensor<4x16xi32>) -> (tensor<f32>, tensor<64x10xf32>) {
      ...  (the program of one micro-batch)
      step.yield %loss, %grad.w : tensor<f32>, tensor<64x10xf32>
    }
    %micro_batches = step.constant 4.0 : tensor<f32>
    %loss.mean = step.div %loss.sum, %micro_batches : (tensor<f32>, tensor<f32>) -> tensor<f32>
    ...

The attribute is consumed (the program after the pass takes stacked inputs and has none), so
a second run changes nothing. K = 1 is the same loop of one trip: the inputs still gain their
leading axis of 1, so that a caller feeding K micro-batches works for every K. Without the
attribute the pass changes nothing; the default pipeline runs it only on a program that has it
(`stepc.passes.applies`).

The contract (`check/accumulate_gradients.py`): on random K-stacked inputs, the post-pass
program equals the mean over k of the pre-pass program run on micro-batch k, evaluated
independently (the pre-pass program K times, in float64 with its rounding-error bounds).
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Attribute, Block, Region, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

from stepc.ir.builder import LocatedBuilder
from stepc.ir.diagnostics import StepcError, part_location
from stepc.ir.dialect import (
    ACCUMULATE,
    AccumulateOp,
    ConstantOp,
    DivOp,
    YieldOp,
    element_of,
    make_tensor,
    shape_of,
)
from stepc.ir.program import (
    Form,
    check_accumulation,
    entry_block,
    function_form,
    inputs,
    output_names,
    step_function,
)

MICRO_SUFFIX = ".micro"  # micro-batch k of input %x is `%x.micro` in the loop's body
SUM_SUFFIX = ".sum"  # the sum of a result `%loss` over the micro-batches is `%loss.sum`
MEAN_SUFFIX = ".mean"  # and its mean `%loss.mean`


def stacked_type(t: Attribute, count: int) -> Attribute:
    """The type of K micro-batches of an input of type `t`: a leading axis of K."""
    return make_tensor((count, *shape_of(t)), element_of(t))


def accumulate_function(fn: func.FuncOp) -> None:
    """Turn the program of one micro-batch into the mean over K stacked ones (in place)."""
    count = check_accumulation(fn)
    if count is None:
        return
    where = part_location(fn, ACCUMULATE)
    if function_form(fn) != Form.GRAD:
        raise StepcError(
            "accumulate-gradients needs the program after differentiate and seed-scalar-loss, returning "
            f"(loss, grad.NAME...); found ({', '.join(output_names(fn))})",
            where,
        )
    location = where.to_attr() if where is not None else fn.location
    block = entry_block(fn)
    ret = block.last_op
    assert isinstance(ret, func.ReturnOp)
    batch = inputs(fn)

    # The body: micro-batch k of each input, then every op of the program of one micro-batch.
    body = Block(arg_types=[a.type for a in batch])
    stacked: list[SSAValue] = []
    for arg, micro in zip(batch, body.args):
        micro.name_hint = arg.name + MICRO_SUFFIX
        arg.value.replace_all_uses_with(micro)
        new = block.insert_arg(stacked_type(arg.type, count), arg.index)
        new.name_hint = arg.name
        new.location = arg.value.location
        block.erase_arg(arg.value)
        stacked.append(new)
    for op in list(block.ops):
        if op is ret:
            break
        op.detach()
        body.add_op(op)
    results = list(ret.arguments)
    body.add_op(YieldOp(results))

    loop = AccumulateOp(stacked, [v.type for v in results], Region(body))
    loop.location = location
    Rewriter.insert_op(loop, InsertPoint.before(ret))
    builder = LocatedBuilder(InsertPoint.before(ret), location=location)
    means = mean_over_micro_batches(builder, list(loop.sums), count)
    for total, mean, value in zip(loop.sums, means, results):
        if value.name_hint is not None:
            total.name_hint = value.name_hint + SUM_SUFFIX
            mean.name_hint = value.name_hint + MEAN_SUFFIX
    new_ret = func.ReturnOp(*means)
    new_ret.location = ret.location
    Rewriter.replace_op(ret, new_ret)
    del fn.attributes[ACCUMULATE]
    fn.update_function_type()


def mean_over_micro_batches(builder: LocatedBuilder, sums: list[SSAValue], count: int) -> list[SSAValue]:
    """Each sum divided by K in its own type (one `step.constant K` per element type)."""
    divisors: dict[Attribute, SSAValue] = {}
    means: list[SSAValue] = []
    for total in sums:
        element = element_of(total)
        if element not in divisors:
            divisor = builder.emit(ConstantOp(float(count), make_tensor((), element)))
            divisor.name_hint = "micro_batches"
            divisors[element] = divisor
        means.append(builder.emit(DivOp(total, divisors[element])))
    return means


@dataclass(frozen=True)
class AccumulateGradients(ModulePass):
    """Gradient accumulation over `step.accumulate = K` micro-batches (see the module docstring)."""

    name = "accumulate-gradients"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        accumulate_function(step_function(op))
