"""The contract of `differentiate`: the primal outputs are unchanged, and
`<cotangent, J dx> = <gradient, dx>`, with `J dx` from an independent forward-mode
computation: `jax.jvp` of the pre-pass program through the JAX backend, an implementation of
the ops that shares no code with the derivative rules. Everything runs in float64
(`promote_to_f64`).

One trial draws one direction `dx` for all parameters at once, so one forward-mode run checks
every gradient: `<ct, J dx> = sum_p <grad_p, dx_p>` (a wrong gradient would have to be wrong
in exactly the direction that cancels another's error, an event of probability 0 for a random
`dx`). When a trial fails, it is repeated per parameter so the report names the gradient.

The bound of a pairing (`pairing_bound`): the gradient side's from the post-pass program's
rounding-error bounds (`stepc.ir.error_bounds`, `<e_grad, |dx|>`), the same again for the
forward-mode side (the running bound of a chain of products and of its transpose is the same
sum over paths, to first order), and the two final inner products' `gamma_n` terms.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from xdsl.dialects.builtin import Float64Type, ModuleOp, TensorType
from xdsl.ir import Attribute
from xdsl.rewriter import Rewriter

from stepc.backends.jax import jax_function
from stepc.backends.jaxpr_numpy import evaluate
from stepc.check.contract import Arrays, Comparison, Contract, bounded_program, random_inputs
from stepc.ir.dialect import is_float, make_tensor
from stepc.ir.error_bounds import U64, Bounded, gamma
from stepc.ir.program import Arg, args, cotangents, grad_key, output_names, params, step_function
from stepc.passes.lower_to_stablehlo import lowered_clone


def promote_to_f64(module: ModuleOp) -> ModuleOp:
    """A copy of `module` with every float element type float64 (arguments, results, constants).

    `step.convert` between float types becomes an f64 -> f64 cast, the identity; i32 stays.
    """
    module = module.clone()
    fn = step_function(module)
    block = fn.body.block
    for arg in list(block.args):
        promoted = _promoted(arg.type)
        if promoted is not None:
            location = arg.location
            new = Rewriter.replace_value_with_new_type(arg, promoted)
            new.location = location  # type: ignore[attr-defined]  # BlockArgument has it; the union type does not
    for op in list(block.ops):
        for result in list(op.results):
            promoted = _promoted(result.type)
            if promoted is not None:
                Rewriter.replace_value_with_new_type(result, promoted)
    fn.update_function_type()
    return module


def _promoted(t: Attribute) -> TensorType[Attribute] | None:
    if isinstance(t, TensorType):
        element = t.get_element_type()
        if is_float(element) and not isinstance(element, Float64Type):
            return make_tensor(tuple(t.get_shape()), Float64Type())
    return None


# A forward-mode derivative: (inputs, tangents of some float arguments) -> (outputs, tangents of outputs).
ForwardMode = Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], tuple[Arrays, Arrays]]


def jax_forward_mode(module: ModuleOp) -> ForwardMode:
    """`jax.jvp` of a program through the JAX backend, compiled by XLA once per program (the
    tangents of every float argument are inputs; the ones not asked for are zero)."""
    return _forward_mode(module, engine="xla")


def numpy_forward_mode(module: ModuleOp) -> ForwardMode:
    """The same `jax.jvp` through the JAX backend, its jaxpr evaluated with NumPy
    (`stepc.backends.jaxpr_numpy`): no XLA compile, for checking many small programs."""
    return _forward_mode(module, engine="numpy")


def _forward_mode(module: ModuleOp, engine: str) -> ForwardMode:
    """Float64 throughout: x64 is switched on only inside each call (`jax.enable_x64`), so the
    user's x32 default is left alone."""
    compiled = jax_function(lowered_clone(module))
    arg_names = list(compiled.arg_names)
    out_names = list(compiled.output_names)
    fn = step_function(module)
    differentiable = [a.name for a in args(fn) if is_float(a.type.get_element_type())]
    fixed_names = [n for n in arg_names if n not in differentiable]

    def jvp_all(fixed: tuple[Any, ...], primals: tuple[Any, ...], directions: tuple[Any, ...]) -> Any:
        def of_differentiable(*values: Any) -> tuple[Any, ...]:
            env = {**dict(zip(fixed_names, fixed)), **dict(zip(differentiable, values))}
            return tuple(compiled.fn(*(env[n] for n in arg_names)))

        return jax.jvp(of_differentiable, primals, directions)

    jitted = jax.jit(jvp_all) if engine == "xla" else None

    def jvp(inputs: Mapping[str, np.ndarray], tangents: Mapping[str, np.ndarray]) -> tuple[Arrays, Arrays]:
        fixed = tuple(np.asarray(inputs[n]) for n in fixed_names)
        primals = tuple(np.asarray(inputs[n], dtype=np.float64) for n in differentiable)
        directions = tuple(
            np.asarray(tangents[n], dtype=np.float64) if n in tangents else np.zeros_like(p)
            for n, p in zip(differentiable, primals)
        )
        with jax.enable_x64(True):
            if jitted is not None:
                outputs, output_tangents = jitted(fixed, primals, directions)
            else:
                flat = evaluate(jvp_all, fixed, primals, directions)
                outputs, output_tangents = flat[: len(out_names)], flat[len(out_names) :]
        return (
            {n: np.asarray(v) for n, v in zip(out_names, outputs)},
            {n: np.asarray(v) for n, v in zip(out_names, output_tangents)},
        )

    return jvp


@dataclass
class Promoted:
    """Both programs in float64, the forward mode of the one before, and the argument roles."""

    after: ModuleOp
    jvp: ForwardMode
    primal_names: list[str]
    cotangents: list[Arg]
    params: list[Arg]


class VJPContract(Contract[Promoted | None]):
    """`<cotangent, J dx> = <gradient, dx>` in float64 within the pairing's rounding-error bound,
    for a random direction over all parameters; per parameter when that fails (so a failure
    names the gradient, `grad.w1`, that is wrong)."""

    name = "vjp: <ct,J dx>=<grad,dx>"

    def __init__(self, forward_mode: Callable[[ModuleOp], ForwardMode] = jax_forward_mode):
        self.forward_mode = forward_mode

    def without_xla(self) -> VJPContract:
        return VJPContract(numpy_forward_mode)

    def prepare(self, before: ModuleOp, after: ModuleOp, comparison: Comparison) -> Promoted | None:
        before64, after64 = promote_to_f64(before), promote_to_f64(after)
        fn_before, fn_after = step_function(before64), step_function(after64)
        primal_names = output_names(fn_before)
        after_names = output_names(fn_after)
        cotangent_args = cotangents(fn_after)
        param_args = params(fn_before)
        expected = [*primal_names, *(grad_key(p.name) for p in param_args)]
        if after_names != expected or len(cotangent_args) != len(primal_names):
            comparison.mismatch(
                f"outputs {after_names} with {len(cotangent_args)} cotangent argument(s), "
                f"expected {expected} with {len(primal_names)}"
            )
            return None
        return Promoted(after64, self.forward_mode(before64), primal_names, cotangent_args, param_args)

    def trial(self, prepared: Promoted | None, rng: np.random.Generator, comparison: Comparison) -> None:
        assert prepared is not None  # `check` runs no trial after a mismatch
        inputs = random_inputs(step_function(prepared.after), rng)
        outputs = bounded_program(prepared.after, inputs)
        directions = {p.name: rng.standard_normal(tuple(p.type.get_shape())) for p in prepared.params}
        primal, tangent = prepared.jvp(inputs, directions)
        for name in prepared.primal_names:
            comparison.compare(name, outputs[name], primal[name])
        cotangent_values = [inputs[c.name] for c in prepared.cotangents]
        tangents = [tangent[n] for n in prepared.primal_names]
        gradients = [outputs[grad_key(p.name)] for p in prepared.params]
        together = Comparison()
        add_pairing(together, "all gradients", cotangent_values, tangents, gradients, list(directions.values()))
        if together.ok or len(prepared.params) == 1:
            if len(prepared.params) == 1:
                together.worst = grad_key(prepared.params[0].name)
            comparison.absorb(together)
            return
        for param, gradient in zip(prepared.params, gradients):  # name the wrong gradient
            _, alone = prepared.jvp(inputs, {param.name: directions[param.name]})
            add_pairing(
                comparison, grad_key(param.name), cotangent_values,
                [alone[n] for n in prepared.primal_names], [gradient], [directions[param.name]],
            )  # fmt: skip
        if comparison.ok:  # each alone holds but not together: report the combined failure
            comparison.absorb(together)


def pairing_bound(
    cotangent_values: list[np.ndarray], tangents: list[np.ndarray], gradients: list[Bounded], dxs: list[np.ndarray]
) -> float:
    """The rounding-error bound of `<ct, J dx> - <grad, dx>` (see the module's docstring)."""
    carried = float(sum(np.sum(g.bound() * np.abs(dx)) for g, dx in zip(gradients, dxs)))
    rhs_terms = float(sum(np.sum(np.abs(g.value * dx)) for g, dx in zip(gradients, dxs)))
    lhs_terms = float(sum(np.sum(np.abs(c * t)) for c, t in zip(cotangent_values, tangents)))
    n_rhs = sum(dx.size for dx in dxs)
    n_lhs = sum(np.size(c) for c in cotangent_values)
    return 2.0 * carried + gamma(n_rhs, U64) * rhs_terms + gamma(n_lhs, U64) * lhs_terms


def add_pairing(
    comparison: Comparison, name: str, cotangent_values: list[np.ndarray], tangents: list[np.ndarray],
    gradients: list[Bounded], dxs: list[np.ndarray],
) -> None:  # fmt: skip
    """Compare `<cotangent, J dx>` with `<gradient, dx>` against `pairing_bound`."""
    lhs = float(sum(np.sum(c * t) for c, t in zip(cotangent_values, tangents)))
    rhs = float(sum(np.sum(g.value * dx) for g, dx in zip(gradients, dxs)))
    if not (math.isfinite(lhs) and math.isfinite(rhs)):
        if lhs == rhs or (math.isnan(lhs) and math.isnan(rhs)):
            return
        comparison.mismatch(f"{name} (<ct, J dx> = {lhs}, <grad, dx> = {rhs})")
        return
    bound = pairing_bound(cotangent_values, tangents, gradients, dxs)
    if math.isinf(bound):
        comparison.unchecked += 1
    comparison.add(name, abs(lhs - rhs), bound, "f64")
