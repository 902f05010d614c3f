"""The functions the JAX backend's table calls beyond `jax.lax`.

- `abs0`, `relu0`: `lax.abs` and `lax.max` with PyTorch's derivatives at their kinks.
- `dot_general`, `aligned`: under explicit mesh axes, the output shardings that JAX's own
  rules refuse to choose (see "Explicit sharding" below); `lax.dot_general` itself, and the
  operands of an elementwise lax call (`lax.add(*aligned(a, b))`).

`backends/jax.py` calls these functions, and the module `stepc compile --emit jax-py` writes
carries a copy of this file's code after its imports (`backends/jax_py.py`), so both run the
same code. Hence the rules for this file: it imports only `jax` and `lax` (the emitted module
imports them too), it has no `from __future__` import, and its annotations name only builtins
and `jax` (they are evaluated where the copy runs).

Explicit sharding: under a mesh with `AxisType.Explicit` axes (the default of
`jax.make_mesh`), every traced value has a sharding in its type, and a lax call whose result
sharding is ambiguous or illegal is a `ShardingTypeError` unless the caller names one. A
hand-written JAX step never meets this in `dot_general`, because JAX's transpose rules pass
`out_sharding` themselves; stepc's step is already differentiated, so these helpers choose:

- a `dot_general` contracting a dim that both operands shard is a sum of partial sums: its
  output keeps the operands' other shardings (the partial sums are all-reduced);
- a mesh axis may shard only one dim of a value, and a dim only one way: where the output of
  `dot_general`, or of an elementwise op, would break that (a batch-sharded activation plus an
  FSDP-sharded bias broadcast along the features), the first dim naming the axis keeps it
  (within a dim, the first operand's sharding), and an elementwise operand sharded otherwise
  is all-gathered along that dim first; `dot_general` gathers by its `out_sharding`.

A value whose mesh has no explicit axes (no mesh, or `AxisType.Auto` ones: GSPMD propagates)
takes the plain lax call, with no op added.
"""

import jax
from jax import lax

# The names the table may call (`backends/jax.py` NAMESPACE).
__all__ = ["abs0", "aligned", "dot_general", "relu0", "while_loop"]

# ---------------------------------------------------------------------------------------------
# PyTorch's derivatives at kinks


@jax.custom_jvp
def abs0(x: jax.Array) -> jax.Array:
    """|x| with PyTorch's derivative sign(x), 0 at 0 (lax.abs's derivative is 1 there)."""
    return lax.abs(x)


@abs0.defjvp
def _abs0_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]) -> tuple[jax.Array, jax.Array]:
    (x,), (tangent,) = primals, tangents
    return lax.abs(x), lax.sign(x) * tangent


@jax.custom_jvp
def relu0(x: jax.Array, zero: jax.Array) -> jax.Array:
    """max(x, 0) with PyTorch's derivative, 0 at 0 (lax.max's is 0.5 there)."""
    return lax.max(x, zero)


@relu0.defjvp
def _relu0_jvp(
    primals: tuple[jax.Array, jax.Array], tangents: tuple[jax.Array, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    (x, zero), (tangent, _) = primals, tangents
    return lax.max(x, zero), lax.select(lax.gt(x, zero), tangent, lax.full_like(tangent, 0))


# ---------------------------------------------------------------------------------------------
# Loops


def while_loop(cond, body, init: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """`lax.while_loop` over a tuple of arrays, with `cond` and `body` functions of positional
    arrays (as the module's own functions are): `cond` returns a 1-tuple holding a boolean
    scalar, `body` a tuple like `init`."""
    return lax.while_loop(lambda carry: cond(*carry)[0], lambda carry: tuple(body(*carry)), tuple(init))


# ---------------------------------------------------------------------------------------------
# Explicit sharding


def dot_general(
    lhs: jax.Array,
    rhs: jax.Array,
    dimension_numbers: lax.DotDimensionNumbers,
    preferred_element_type: jax.typing.DTypeLike | None = None,
) -> jax.Array:
    """`lax.dot_general`, naming its output sharding where JAX's rule would refuse to choose one."""
    return lax.dot_general(
        lhs,
        rhs,
        dimension_numbers,
        preferred_element_type=preferred_element_type,
        out_sharding=_dot_out_sharding(lhs, rhs, dimension_numbers),
    )


def aligned(*operands: jax.Array) -> tuple[jax.Array, ...]:
    """The same-shaped operands of an elementwise lax op, each all-gathered along the dims where
    its explicit sharding clashes with another operand's (unchanged when none clashes)."""
    specs = [_explicit_spec(x) for x in operands]
    if sum(spec is not None for spec in specs) < 2:  # one sharded operand never clashes
        return operands
    rank = max(len(spec) for spec in specs if spec is not None)  # a select's predicate may be a scalar
    result = _legal_spec([[spec[d] for spec in specs if spec is not None and d < len(spec)] for d in range(rank)])
    out = []
    for x, spec in zip(operands, specs):
        if spec is not None:
            kept = tuple(entry if entry == result[d] else None for d, entry in enumerate(spec))
            if kept != spec:  # x shards a dim along an axis that the result gives to another dim
                x = _reshard(x, kept)
        out.append(x)
    return tuple(out)


def _dot_out_sharding(
    lhs: jax.Array,
    rhs: jax.Array,
    dimension_numbers: lax.DotDimensionNumbers,
) -> jax.sharding.NamedSharding | None:
    """The output sharding `dot_general` needs under explicit axes, or None where JAX's own rule
    decides: without explicit axes, or when no contracting dim is sharded on both sides and no
    mesh axis would shard two output dims."""
    lhs_spec, rhs_spec = _explicit_spec(lhs), _explicit_spec(rhs)
    if lhs_spec is None or rhs_spec is None:  # a replicated operand adds no axis to the output
        return None
    (lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch) = dimension_numbers
    # JAX's output dims: batch dims, then the free dims of lhs, then those of rhs.
    lhs_free = [d for d in range(len(lhs_spec)) if d not in (*lhs_contracting, *lhs_batch)]
    rhs_free = [d for d in range(len(rhs_spec)) if d not in (*rhs_contracting, *rhs_batch)]
    candidates = [[lhs_spec[d]] for d in (*lhs_batch, *lhs_free)] + [[rhs_spec[d]] for d in rhs_free]
    result = _legal_spec(candidates)
    summed = any(lhs_spec[i] is not None and rhs_spec[j] is not None for i, j in zip(lhs_contracting, rhs_contracting))
    dropped = any(entry is None and any(c is not None for c in options) for entry, options in zip(result, candidates))
    if not summed and not dropped:
        return None
    return jax.sharding.NamedSharding(jax.typeof(lhs).sharding.mesh, jax.sharding.PartitionSpec(*result))


def _explicit_spec(x: jax.Array) -> tuple[object, ...] | None:
    """The sharding of each dim of x's type (None, an axis name or a tuple of them) when its mesh
    has explicit axes; None otherwise (no mesh, auto axes, a constant)."""
    aval = jax.typeof(x)
    sharding = aval.sharding
    if sharding is None or jax.sharding.AxisType.Explicit not in sharding.mesh.axis_types:
        return None
    spec = tuple(sharding.spec)
    return spec + (None,) * (len(aval.shape) - len(spec))


def _legal_spec(candidates: list[list[object]]) -> tuple[object, ...]:
    """One sharding per dim from each dim's candidates: the first that names no mesh axis an
    earlier dim took (a mesh axis shards at most one dim), else None (replicated)."""
    taken: set[object] = set()
    result = []
    for options in candidates:
        entry = next((c for c in options if c is not None and not taken & set(_axes(c))), None)
        taken.update(_axes(entry))
        result.append(entry)
    return tuple(result)


def _axes(entry: object) -> tuple[object, ...]:
    """The mesh axes of one dim's sharding: none, one name, or a tuple of names."""
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, tuple) else (entry,)


def _reshard(x: jax.Array, spec: tuple[object, ...]) -> jax.Array:
    """x resharded to `spec` on its own mesh (every change here removes axes: an all-gather)."""
    mesh = jax.typeof(x).sharding.mesh
    return jax.sharding.reshard(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec)))
