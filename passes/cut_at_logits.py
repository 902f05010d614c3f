"""`cut-at-logits`: the forward program returning its classifier's logits instead of the loss.

`stepc run` measures accuracy with it: the logits are where `ir.program.classifier_head` finds
them (the operand of the cross-entropy whose labels are a batch input, or of a last-axis
softmax multiplied by one-hot targets). The return becomes that value, under the key `logits`,
and the ops it no longer needs are erased; the arguments are kept, so the cut program takes the
same parameters and batch (random keys included, though unused). Dropout is evaluated as in
`model.eval()`: each `step.dropout` becomes the identity. A program that is not a classifier's is
a `PassFailedException`.

It has no contract of its own: it computes no new value (its output is a value of the input
program, unchanged), and the tests check the accuracy it gives against NumPy's argmax of the
logits computed independently.
"""

from __future__ import annotations

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import FunctionType, ModuleOp
from xdsl.passes import ModulePass
from xdsl.utils.exceptions import PassFailedException

from stepc.ir.program import LOGITS, classifier_head, set_output_names, step_function

DROPOUT = "step.dropout"


def cut_at_logits(fn: func.FuncOp) -> None:
    head = classifier_head(fn)
    if head is None or head.logits is None:
        raise PassFailedException(
            "cut-at-logits: the loss is not a classifier's (no step.cross_entropy with batch-input labels, "
            "and no softmax times one-hot targets)"
        )
    block = fn.body.block
    ret = block.last_op
    assert isinstance(ret, func.ReturnOp)
    logits = head.logits
    new_ret = func.ReturnOp(logits)
    new_ret.location = ret.location
    block.insert_op_before(new_ret, ret)
    ret.detach()
    ret.erase()
    for op in list(block.ops):  # evaluation mode: dropout is the identity (`model.eval()`)
        if op.name == DROPOUT:
            op.results[0].replace_all_uses_with(op.operands[0])
    for op in reversed(list(block.ops)):
        if op is not new_ret and all(not r.uses for r in op.results):
            op.detach()
            op.erase()
    fn.function_type = FunctionType.from_lists(list(fn.function_type.inputs.data), [logits.type])
    set_output_names(fn, [LOGITS])


class CutAtLogits(ModulePass):
    """The forward program cut at its logits (result key `logits`)."""

    name = "cut-at-logits"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        cut_at_logits(step_function(op))
