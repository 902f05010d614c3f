"""`stepc.from_torch`: a PyTorch module, its loss and its optimizer as a checked step program.

    imp = stepc.from_torch(model, loss_fn, batch, optimizer)   # loss_fn(model, batch) -> scalar tensor
    imp.text          # the step IR: one {step.param} argument per trainable parameter
    imp.names         # {"0.weight": "_0.weight", ...}: torch parameter name -> IR name
    imp.params()      # the module's current parameter values, keyed by IR names (NumPy)
    imp.batch(batch)  # a torch batch dict as the step's batch dict (int64 becomes i32)
    prog = imp.compile()

How: `torch.export` captures `loss_fn(model, batch)` (the module's `training` mode decides what
dropout does), the graph is decomposed to core ATen except the ops `torch_ops.KEPT` keeps whole,
and each node is written by its rule in `torch_ops.RULES` (the table of `docs/importing.md`).
Parameters become `{step.param}` arguments named by `ir_name` (reversible: `torch_name`), with
the optimizer's fields on the function and each other parameter group's differences on its
parameters; batch tensors become the other arguments under their keys; each training-mode
dropout gets a `tensor<2xui32>` key input of its own; buffers, frozen parameters and constants
become `step.constant`s (constant subgraphs, a causal mask sliced and negated say, are
computed by torch at import).

The import is checked like a pass (`check_import`): on random inputs the imported program's loss
and gradients, run as compiled (f32 for an f32 model), equal the module's own, computed by
autograd on a float64 copy, within the program's rounding-error bound. What cannot be imported is
a `StepcError` at the line of the user's Python code the op comes from (torch.export keeps the
stack of every node), never a partial program.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import io
import logging
import operator
import os
import re
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from stepc.api import Program, compile_text
from stepc.check.contract import ContractReport
from stepc.frontends.contract import check_against
from stepc.frontends.torch_ops import DTYPES, IGNORED, KEPT, RANDOM, RULES, Context, ImportError_, Unusable
from stepc.frontends.writer import BatchInput, IRWriter, Value, float_text, ir_value_name, source_name, step_batch
from stepc.ir.diagnostics import Note, SourceLoc, StepcError, remember_source
from stepc.ir.threefry import keep_mask

# ---------------------------------------------------------------------------------------------
# Names

_TORCH_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")


def ir_name(name: str) -> str:
    """The IR value name of a torch parameter or batch key: the name itself (dots and all), with
    one `_` put in front of a name that starts with a digit after any underscores (`0.weight` ->
    `_0.weight`, `_1.bias` -> `__1.bias`), so that every name is a valid IR name and
    `torch_name(ir_name(n)) == n` for every name made of identifiers and indices joined by dots."""
    if not _TORCH_NAME.fullmatch(name):
        raise StepcError(
            f"the name {name!r} cannot be an IR value name: stepc imports names made of letters, digits "
            "and '_', joined by dots (rename the submodule, parameter or batch key)"
        )
    return ir_value_name(name)


def torch_name(name: str) -> str:
    """The inverse of `ir_name`."""
    return source_name(name)


# ---------------------------------------------------------------------------------------------
# Where a node comes from

_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<fn>[^\n]+)\n(?P<code>[^\n]*)')
_TORCH_DIR = os.path.dirname(torch.__file__)
_STEPC_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PYTHON_DIR = os.path.dirname(os.__file__)


def _is_user_file(path: str) -> bool:
    path = os.path.abspath(path)
    if path.startswith((_TORCH_DIR, _PYTHON_DIR)) or "site-packages" in path:
        return False
    return not path.startswith(os.path.join(_STEPC_DIR, "frontends"))


@dataclass(frozen=True)
class UserLine:
    file: str
    line: int
    code: str

    def loc(self) -> SourceLoc:
        """The line, its column at the first character of its code (the file's own text)."""
        code = self.code
        try:
            with open(self.file, encoding="utf-8") as f:
                text = f.read()
            remember_source(self.file, text)
            lines = text.split("\n")
            if 1 <= self.line <= len(lines):
                code = lines[self.line - 1]
        except OSError:
            pass
        stripped = code.lstrip()
        return SourceLoc(self.file, self.line, len(code) - len(stripped) + 1, max(1, len(stripped.rstrip())))

    def comment(self) -> str:
        shown = os.path.relpath(self.file)
        if shown.startswith(".."):
            shown = self.file
        return f"{shown}:{self.line}: {self.code.strip()}"


def _user_line_of_stack(stack_trace: str | None) -> UserLine | None:
    last = None
    for m in _FRAME.finditer(stack_trace or ""):
        if _is_user_file(m["file"]):
            last = UserLine(m["file"], int(m["line"]), m["code"])
    return last


def _user_line_of_exception(error: BaseException) -> UserLine | None:
    last = None
    for frame in traceback.extract_tb(error.__traceback__):
        if _is_user_file(frame.filename):
            last = UserLine(frame.filename, frame.lineno or 0, frame.line or "")
    return last


# ---------------------------------------------------------------------------------------------
# The optimizer

_SGD_FIELDS = {"lr": None, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False, "maximize": False}
_ADAM_FIELDS = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
                "maximize": False}  # fmt: skip


def _field_text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else float_text(float(value))


def _group_fields(kind: str, group: Mapping[str, Any]) -> dict[str, Any]:
    def number(key: str) -> float:
        v = group[key]
        return float(v.item()) if isinstance(v, torch.Tensor) else float(v)

    if kind == "sgd":
        return {"lr": number("lr"), "momentum": number("momentum"), "dampening": number("dampening"),
                "weight_decay": number("weight_decay"), "nesterov": bool(group["nesterov"]),
                "maximize": bool(group["maximize"])}  # fmt: skip
    b1, b2 = group["betas"]
    return {"lr": number("lr"), "beta1": float(b1), "beta2": float(b2), "eps": number("eps"),
            "weight_decay": number("weight_decay"), "amsgrad": bool(group["amsgrad"]),
            "maximize": bool(group["maximize"])}  # fmt: skip


def _attr(kind: str, fields: Mapping[str, Any]) -> str:
    return f"#step.{kind}<" + ", ".join(f"{k} = {_field_text(v)}" for k, v in fields.items()) + ">"


@dataclass
class OptimizerImport:
    kind: str  # sgd, adam, adamw
    function_attr: str  # `step.sgd = #step.sgd<...>`
    param_attrs: dict[str, str]  # torch name -> `#step.sgd<...>` override (absent: the function's fields)
    trainable: list[str]  # torch names, in the module's order


def import_optimizer(optimizer: Any, model: torch.nn.Module) -> OptimizerImport:
    """The optimizer's kind and fields: the largest parameter group's on the function (fields at
    stepc's defaults left out, `lr` always written), every other group's differences on each of
    its parameters (a PyTorch parameter group). A module parameter in no group is frozen."""
    exact = type(optimizer)
    if exact is torch.optim.SGD:
        kind = "sgd"
    elif exact is torch.optim.AdamW:
        kind = "adamw"
    elif exact is torch.optim.Adam:
        kind = "adamw" if optimizer.param_groups and optimizer.param_groups[0].get("decoupled_weight_decay") else "adam"
    else:
        raise StepcError(
            f"the optimizer is a {exact.__module__}.{exact.__qualname__}: stepc imports torch.optim.SGD, Adam and AdamW "
            "(no subclass: a subclass may change the update)"
        )
    if getattr(optimizer.step, "_wrapped_by_lr_sched", False) or any("initial_lr" in g for g in optimizer.param_groups):
        raise StepcError(
            "a learning-rate scheduler is attached to the optimizer: the imported step has one learning rate; "
            "schedule it with `stepc run --lr-schedule` or a `{step.hyper = \"lr\"}` input (docs/optimizers.md)"
        )
    if len(optimizer.state) > 0:
        raise StepcError(
            "the optimizer has already stepped (it holds state): import it before training, so the compiled "
            "step's init_state (zeros, torch's state before its first step) is the optimizer's"
        )
    names = {id(p): n for n, p in model.named_parameters()}
    groups: list[tuple[dict[str, Any], list[str]]] = []
    for index, group in enumerate(optimizer.param_groups):
        if group.get("differentiable"):
            raise StepcError(f"parameter group {index} has differentiable=True, which stepc does not import")
        members = []
        for p in group["params"]:
            if id(p) not in names:
                raise StepcError(f"parameter group {index} holds a tensor of shape {tuple(p.shape)} that is not a parameter of the model")
            if p.requires_grad:
                members.append(names[id(p)])
        fields = _group_fields("sgd" if kind == "sgd" else "adam", group)
        if kind == "sgd" and fields["nesterov"] and (fields["momentum"] <= 0 or fields["dampening"] != 0):
            raise StepcError(f"parameter group {index}: nesterov needs momentum > 0 and dampening 0 (torch's rule)")
        groups.append((fields, members))
    if not any(members for _, members in groups):
        raise StepcError("the optimizer updates no trainable parameter of the model")
    main_fields, _ = max(groups, key=lambda g: len(g[1]))
    defaults = dict(_SGD_FIELDS if kind == "sgd" else _ADAM_FIELDS)
    if kind == "adamw":
        defaults["weight_decay"] = 0.01
    written = {k: v for k, v in main_fields.items() if k == "lr" or v != defaults.get(k)}
    param_attrs: dict[str, str] = {}
    trainable: set[str] = set()
    for fields, members in groups:
        diff = {k: v for k, v in fields.items() if v != main_fields[k]}
        for n in members:
            trainable.add(n)
            if diff:
                param_attrs[n] = _attr(kind, diff)
    order = [n for n, _ in model.named_parameters() if n in trainable]
    return OptimizerImport(kind, f"step.{kind} = {_attr(kind, written)}", param_attrs, order)


# ---------------------------------------------------------------------------------------------
# The import


class _Loss(torch.nn.Module):
    """What torch.export captures: `loss_fn(model, batch)` with the batch as keyword arguments."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable[..., Any]) -> None:
        super().__init__()
        self.model = model
        object.__setattr__(self, "_loss_fn", loss_fn)  # not a submodule, even when an nn.Module

    def forward(self, **batch: torch.Tensor) -> Any:
        loss_fn: Callable[..., Any] = self.__dict__["_loss_fn"]
        return loss_fn(self.model, batch)


PREFIX = "model."


@dataclass(frozen=True)
class DropoutSite:
    key: str  # the key input's IR name
    rate: float


@dataclass(eq=False)
class Imported:
    """An imported training step: its text, its names, and conversions of torch values."""

    text: str
    names: dict[str, str]  # torch parameter name -> IR name
    filename: str
    model: torch.nn.Module = field(repr=False)
    inputs: list[BatchInput] = field(repr=False)
    dropout: list[DropoutSite] = field(repr=False)
    optimizer: str = "sgd"
    report: ContractReport | None = None
    seconds: dict[str, float] = field(default_factory=dict[str, float])  # export, translate, check

    def params(self) -> dict[str, np.ndarray]:
        """The module's current values of the imported parameters, keyed by IR name (copies)."""
        named = dict(self.model.named_parameters())
        return {ir: named[t].detach().cpu().numpy().copy() for t, ir in self.names.items()}

    def state_dict(self, params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Parameters keyed by IR name (what `prog.step` returns) as torch tensors keyed by torch
        name, for `model.load_state_dict(..., strict=False)`."""
        return {t: torch.from_numpy(np.array(params[ir])) for t, ir in self.names.items()}

    def batch(self, batch: Mapping[str, Any], keys: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        """A torch batch dict as the step's batch dict: each tensor under its IR name as NumPy,
        int64 labels and ids as int32 (values outside [0, 2**31) refused; the program's own
        check then holds them to their classes or rows). A program with training-mode dropout
        takes one key per dropout (`tensor<2xui32>`): given in `keys` by name, or drawn from
        torch's generator (so `torch.manual_seed` repeats them)."""
        if not isinstance(batch, Mapping):
            raise TypeError(f"the batch is a dict of tensors, found {type(batch).__name__}")
        values = {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        out = step_batch(self.inputs, values)
        for site in self.dropout:
            if keys is not None and site.key in keys:
                out[site.key] = np.asarray(keys[site.key], dtype=np.uint32)
            else:
                words = torch.randint(0, 2**32, (2,), dtype=torch.int64)
                out[site.key] = words.numpy().astype(np.uint32)
        return out

    @contextlib.contextmanager
    def torch_dropout(self, batch: Mapping[str, Any]) -> Iterator[None]:
        """Within it, the model's dropouts (in training mode) draw stepc's masks: the k-th
        dropout call keeps what `step.dropout` with the k-th key of `batch` (a step batch dict,
        `imp.batch(...)`) keeps. For comparing a torch loop with the compiled step bit for bit."""
        with _ThreefryDropout([(np.asarray(batch[s.key], dtype=np.uint32), s.rate) for s in self.dropout]):
            yield

    def compile(self, **options: Any) -> Program:
        """The program compiled as `stepc.compile_text` compiles it (same options)."""
        return compile_text(self.text, filename=self.filename, **options)


class _ThreefryDropout(TorchDispatchMode):
    """Torch's dropout with stepc's masks: CPU dropout draws `bernoulli_(1 - p)` into a buffer
    (or calls `native_dropout`); each call takes the next (key, rate) in order."""

    def __init__(self, sites: Sequence[tuple[np.ndarray, float]]) -> None:
        super().__init__()
        self.sites = list(sites)
        self.next = 0

    def _mask(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self.next >= len(self.sites):
            raise StepcError(f"the model ran more dropouts than the {len(self.sites)} the import saw")
        key, rate = self.sites[self.next]
        self.next += 1
        return torch.from_numpy(keep_mask(key, rate, shape))

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.ops.aten.bernoulli_.float:
            target = args[0]
            return target.copy_(self._mask(tuple(target.shape)).to(target.dtype))
        if func is torch.ops.aten.native_dropout.default:
            x, p, train = args
            if not train or p == 0:
                return x.clone(), torch.ones_like(x, dtype=torch.bool)
            mask = self._mask(tuple(x.shape))
            scale = torch.tensor(1.0 / (1.0 - p), dtype=x.dtype)
            return torch.where(mask, x * scale, torch.zeros((), dtype=x.dtype)), mask
        return func(*args, **kwargs)


def _export(model: torch.nn.Module, loss_fn: Callable[..., Any], batch: Mapping[str, torch.Tensor]) -> Any:
    wrapper = _Loss(model, loss_fn)
    # torch.export keeps the frames of `forward` methods and of registered anchors: the loss
    # function's own lines (a plain function) are kept by registering it.
    anchor = getattr(importlib.import_module("torch.fx.proxy"), "_register_stack_trace_anchor", None)
    if anchor is not None:
        anchor(loss_fn)
    table = torch.export.default_decompositions()
    for op in KEPT:
        table.pop(op, None)
    quiet = logging.getLogger("torch")  # export logs its graph and guards at WARNING on failure
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    chatter = io.StringIO()  # on failure export also prints its graph; the error below says what matters
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own deprecations, not the user's
            exported = torch.export.export(wrapper, (), kwargs=dict(batch), strict=False)
        _refuse_stop_gradient(exported)
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return exported.run_decompositions(table)
    except StepcError:
        raise
    except Exception as error:  # torch's own: data-dependent control flow, dynamic shapes, unsupported Python
        where = _user_line_of_exception(error)
        first = str(error).strip().split("\n")[0][:400]
        raise StepcError(
            f"torch.export could not capture the loss: {type(error).__name__}: {first}",
            where.loc() if where else None,
            ("stepc imports a step whose ops do not depend on the values of the data (no Python `if` on a "
             "tensor's value, no shape read from data): rewrite it with torch.where, or compute it outside the loss",),
        ) from None  # fmt: skip
    finally:
        quiet.setLevel(level)


def _refuse_stop_gradient(exported: Any) -> None:
    """`detach()` or `torch.no_grad()` on a value computed from the parameters is a located error:
    the step language has no stop-gradient op, and decomposed to core ATen such a value is an
    `alias` whose gradient would silently flow. (Checked before decomposing, where torch still
    writes `aten.detach` and the no-grad region.)"""
    from torch.export.graph_signature import InputKind

    live: set[Any] = set()
    parameters = {s.arg.name for s in exported.graph_signature.input_specs if s.kind == InputKind.PARAMETER}
    for node in exported.graph.nodes:
        if node.op == "placeholder":
            if node.name in parameters:
                live.add(node)
            continue
        reads = [a for a in node.all_input_nodes if a in live]
        if not reads:
            continue
        live.add(node)
        grad_off = node.target is getattr(torch.ops.higher_order, "wrap_with_set_grad_enabled", None) and not node.args[0]
        if node.target is torch.ops.aten.detach.default or grad_off:
            where = _user_line_of_stack(node.meta.get("stack_trace"))
            what = "torch.no_grad()" if grad_off else "detach()"
            raise StepcError(
                f"{what} of a value computed from the parameters: the step language has no stop-gradient, so stepc "
                "cannot import it (compute that value outside the loss and pass it in the batch)",
                where.loc() if where else None,
            )


def _function_name(model: torch.nn.Module) -> str:
    name = re.sub(r"\W", "_", type(model).__name__).lower() or "step"
    return name if re.match(r"[A-Za-z_]", name) else "m" + name


def from_torch(
    model: torch.nn.Module,
    loss_fn: Callable[..., Any],
    batch: Mapping[str, torch.Tensor],
    optimizer: Any,
    *,
    check: bool = True,
    trials: int = 2,
    seed: int = 0,
    filename: str | None = None,
) -> Imported:
    """Import `loss_fn(model, batch)` and `optimizer` as a step program (module doc)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, found {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(model, batch), found {type(loss_fn).__name__}")
    if not isinstance(batch, Mapping) or not batch:
        raise TypeError("batch must be a non-empty dict of example tensors (they fix the shapes)")
    for key, value in batch.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise TypeError(f"batch must map str keys to tensors; {key!r} holds {type(value).__name__}")
        if value.dtype not in DTYPES:
            raise StepcError(f"batch '{key}' is a {value.dtype} tensor: stepc imports float tensors and integer "
                             "labels or ids (convert images to float first)")  # fmt: skip
    opt = import_optimizer(optimizer, model)
    filename = filename or f"{_function_name(model)}.ir"
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    program = _export(model, loss_fn, batch)
    seconds["export"] = time.perf_counter() - start
    start = time.perf_counter()
    text, names, inputs, dropout = _translate(program, model, batch, opt, loss_fn)
    seconds["translate"] = time.perf_counter() - start
    imported = Imported(text, names, filename, model, inputs, dropout, opt.kind, seconds=seconds)
    start = time.perf_counter()
    try:
        prog = imported.compile(check=False, until="seed-scalar-loss")
    except StepcError as error:  # the importer wrote something the language refuses: stepc's bug
        raise StepcError(f"internal error: the imported program does not verify ({error.message}); "
                         "please report it with the model") from error  # fmt: skip
    if check:
        imported.report = check_import(imported, prog, loss_fn, trials=trials, seed=seed)
        if not imported.report.ok:
            raise StepcError(imported.report.failure_message().replace("pass import", "the import"))
    seconds["check"] = time.perf_counter() - start
    return imported


def _translate(
    program: Any, model: torch.nn.Module, batch: Mapping[str, torch.Tensor], opt: OptimizerImport, loss_fn: Any
) -> tuple[str, dict[str, str], list[BatchInput], list[DropoutSite]]:
    from torch.export.graph_signature import InputKind

    writer = IRWriter(_function_name(model))
    env: dict[Any, Any] = {}
    names: dict[str, str] = {}
    inputs: list[BatchInput] = []
    dropout: list[DropoutSite] = []
    trainable = set(opt.trainable)
    state = program.state_dict
    constants = program.constants

    # Arguments: parameters (in the module's order), then the batch (in the dict's order).
    specs = program.graph_signature.input_specs
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    for spec in specs:
        node = placeholders[spec.arg.name]
        target = spec.target or ""
        short = target[len(PREFIX) :] if target.startswith(PREFIX) else target
        if spec.kind == InputKind.PARAMETER and short in trainable:
            tensor = state[target]
            if tensor.dtype not in DTYPES or DTYPES[tensor.dtype] == "i32":
                raise StepcError(f"parameter '{short}' is a {tensor.dtype} tensor: parameters are float")
            ir = ir_name(short)
            names[short] = ir
            attr = "step.param" + (f" = {opt.param_attrs[short]}" if short in opt.param_attrs else "")
            env[node] = writer.argument(ir, tuple(tensor.shape), DTYPES[tensor.dtype], attr)
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            env[node] = (state[target] if target in state else constants[target]).detach()
        elif spec.kind == InputKind.USER_INPUT:
            continue
        else:
            raise StepcError(f"the exported loss has an input of kind {spec.kind.name}, which stepc does not import")
    user = {spec.arg.name: spec for spec in specs if spec.kind == InputKind.USER_INPUT}
    for key, tensor in batch.items():
        node = placeholders.get(key)
        if node is None or key not in user:
            raise StepcError(f"batch '{key}' does not reach the exported loss")
        ir = ir_name(key)
        if writer.holds(ir):
            raise StepcError(f"batch key '{key}' has the IR name of a parameter; rename the key")
        dtype = DTYPES[tensor.dtype]
        env[node] = writer.argument(ir, tuple(tensor.shape), dtype)
        inputs.append(BatchInput(key, ir, tuple(tensor.shape), dtype))

    def new_key() -> Value:
        key = writer.argument(writer.fresh("dropout_key"), (2,), "ui32", reserved=True)
        dropout.append(DropoutSite(key.name, float(ctx.node.args[1])))
        return key

    ctx = Context(writer, new_key)
    result: Any = None
    for node in program.graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            result = _map(node.args[0], env)
            break
        if node.op != "call_function":
            raise StepcError(f"the exported graph holds a {node.op} node, which stepc does not import")
        where = _user_line_of_stack(node.meta.get("stack_trace"))
        operands = _map(node.args, env)
        kwargs = _map(node.kwargs, env)
        if node.target is operator.getitem:
            env[node] = operands[0][operands[1]]
            continue
        if node.target in IGNORED:
            continue
        if node.target not in RANDOM and not _reads_program_values(operands, kwargs):
            env[node] = node.target(*operands, **kwargs)  # a constant subgraph: torch computes it now
            continue
        rule = RULES.get(node.target)
        try:
            if rule is None:
                raise ImportError_("stepc's ATen table has no rule for it (docs/importing.md lists the ops it imports)")
            if where is not None:
                writer.comment(where.comment() + _module_of(node))
            ctx.node = node
            env[node] = rule(ctx, *operands, **kwargs)
        except ImportError_ as error:
            raise _located(node, where, str(error)) from None
    loss = result[0] if isinstance(result, list | tuple) else result
    if not isinstance(loss, Value) or loss.shape != () or not loss.is_float:
        raise StepcError(f"loss_fn must return a scalar float tensor computed from the parameters; it returned "
                         f"{_describe(loss)}")  # fmt: skip
    header = [
        f"Imported from PyTorch by stepc.from_torch: model {_where_defined(type(model))}, "
        f"loss {_where_defined(loss_fn)}, optimizer {opt.kind}.",
        "Parameter names are torch's (`stepc.frontends.torch.ir_name`); `// FILE:LINE` comments give each op's source.",
    ]
    return writer.text(loss, opt.function_attr, header), names, inputs, dropout




def _map(value: Any, env: Mapping[Any, Any]) -> Any:
    if isinstance(value, torch.fx.Node):
        return env[value]
    if isinstance(value, list | tuple):
        return type(value)(_map(v, env) for v in value)
    if isinstance(value, dict):
        return {k: _map(v, env) for k, v in value.items()}
    return value


def _reads_program_values(*values: Any) -> bool:
    for v in values:
        if isinstance(v, Value | Unusable):
            return True
        if isinstance(v, list | tuple) and _reads_program_values(*v):
            return True
        if isinstance(v, dict) and _reads_program_values(*v.values()):
            return True
    return False


def _where_defined(thing: Any) -> str:
    """`SmallCNN (models.py:40)`: a class's or function's name and where it is written."""
    name = getattr(thing, "__qualname__", type(thing).__qualname__)
    try:
        file = inspect.getsourcefile(thing)
        line = inspect.getsourcelines(thing)[1]
    except (TypeError, OSError):
        return name
    return f"{name} ({os.path.basename(file or '?')}:{line})"


def _module_of(node: Any) -> str:
    """` [blocks.1.attn: Attention]`: the innermost module the node runs in, if any."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, kind = list(stack.values())[-1]
    path = path[len(PREFIX) :] if path.startswith(PREFIX) else path
    name = kind.__name__ if isinstance(kind, type) else str(kind).rsplit(".", 1)[-1].strip("'>")
    return f"  [{path}: {name}]" if path and path != "model" else ""


def _describe(value: Any) -> str:
    if isinstance(value, Value):
        return f"a {value.type}"
    if isinstance(value, torch.Tensor):
        return f"a constant {tuple(value.shape)} tensor (it reads no parameter)"
    return type(value).__name__


def _located(node: Any, where: UserLine | None, reason: str) -> StepcError:
    op = str(node.target)
    notes: tuple[str | Note, ...] = ()
    if where is None:
        notes = ("torch.export kept no stack for this node",)
    return StepcError(f"cannot import {op}: {reason}", where.loc() if where else None, notes)


# ---------------------------------------------------------------------------------------------
# The contract


def check_import(imported: Imported, prog: Program, loss_fn: Callable[..., Any], *, trials: int, seed: int) -> ContractReport:
    """The import's contract: on `trials` random draws of parameters and batch, the imported
    program's loss and gradients (its gradient program, run in its own precision by the jaxpr
    evaluator) equal torch's autograd on a float64 copy of the module, within the rounding-error
    bound of the program (`stepc.ir.error_bounds`: what any evaluation of the program's ops in
    its precision may differ from their exact value). Training-mode dropout draws stepc's masks
    on both sides (`Imported.torch_dropout`)."""
    model64 = copy.deepcopy(imported.model).double()
    named64 = dict(model64.named_parameters())
    return check_against(prog, lambda inputs: _torch_float64(imported, model64, named64, loss_fn, inputs), "torch",
                         trials=trials, seed=seed)  # fmt: skip


def _torch_float64(
    imported: Imported, model64: torch.nn.Module, named64: Mapping[str, torch.nn.Parameter],
    loss_fn: Callable[..., Any], inputs: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:  # fmt: skip
    with torch.no_grad():
        for t, ir in imported.names.items():
            named64[t].copy_(torch.from_numpy(np.asarray(inputs[ir], dtype=np.float64)))
    for p in model64.parameters():
        p.grad = None
    batch: dict[str, torch.Tensor] = {}
    for spec in imported.inputs:
        value = np.asarray(inputs[spec.name])
        batch[spec.key] = torch.from_numpy(value.astype(np.int64) if spec.dtype == "i32" else value.astype(np.float64))
    with imported.torch_dropout(inputs):
        loss = loss_fn(model64, batch)
    loss.backward()
    out = {"loss": loss.detach().numpy().astype(np.float64)}
    for t, ir in imported.names.items():
        g = named64[t].grad
        out[f"grad.{ir}"] = np.zeros(tuple(named64[t].shape)) if g is None else g.detach().numpy().astype(np.float64)
    return out


__all__ = ["Imported", "check_import", "from_torch", "ir_name", "torch_name"]
