"""Reading a step program: parse with source locations, then verify with located errors."""

from __future__ import annotations

import gc
import os
import re
import stat
from bisect import bisect_right
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar, cast

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import ArrayAttr, Builtin, DictionaryAttr, FileLineColLoc, ModuleOp, StringAttr
from xdsl.ir import Attribute, ErasedSSAValue, Operation, OpResult, SSAValue
from xdsl.irdl import IRDLOperation
from xdsl.parser import Parser
from xdsl.parser.generic_parser import ParserState
from xdsl.traits import OpTrait
from xdsl.utils.exceptions import ParseError, VerifyException
from xdsl.utils.lexer import Input, Span
from xdsl.utils.mlir_lexer import MLIRLexer, MLIRTokenKind

from stepc.ir.diagnostics import (
    Note,
    SourceLoc,
    StepcError,
    location_of,
    part_location,
    remember_part,
    remember_source,
)
from stepc.ir.dialect import Position, Step, attribute_name_error
from stepc.ir.program import arg_name, step_function, verify_step_function
from stepc.ir.stablehlo import Chlo, StableHLO

_ParsedType = TypeVar("_ParsedType", bound=Attribute)

# Programs beyond this size are refused before parsing (a configurable guard against hostile input).
MAX_SOURCE_BYTES = 64 * 1024 * 1024


def make_context() -> Context:
    ctx = Context()
    ctx.load_dialect(Builtin)
    ctx.load_dialect(func.Func)
    ctx.load_dialect(Step)
    ctx.load_dialect(StableHLO)
    ctx.load_dialect(Chlo)
    return ctx


class _LinearLexer(MLIRLexer):
    """xDSL's lexer with a string-literal pattern that cannot backtrack exponentially.

    xDSL 0.74 nests `+` inside `*` in it: an unterminated string on a long line takes
    exponential time (a hang on `tensor<3"2x1xf32>`). One character per repetition accepts
    exactly the same strings in linear time.
    """

    _unescaped_characters_regex = re.compile(r'"(?:[^"\\\n\v\f]|\\(?:["nt\\]|[0-9A-Fa-f]{2}))*"')


# `tensor<16x32xf32>`, `tensor<f32>`: a static tensor type with no encoding, written tight.
_PLAIN_TENSOR = r"tensor<(?:\d+x)*[a-z][a-z0-9]*>"
_PLAIN_TENSOR_TYPE = re.compile(_PLAIN_TENSOR)
# `(tensor<16xf32>, tensor<f32>) -> tensor<16xf32>`: an op's function type of plain tensors.
_PLAIN_FUNCTION_TYPE = re.compile(rf"\((?:{_PLAIN_TENSOR}(?:, {_PLAIN_TENSOR})*)?\) -> {_PLAIN_TENSOR}")


class LocatedParser(Parser):
    """xDSL's parser, keeping the `file:line:col` of every op, block argument and value use.

    Each op parse pushes a frame that collects what is written at the op's own level (a
    function's argument names, the type after its `->`, the names in its attribute
    dictionaries), so that function-level errors can point at the part they are about.
    """

    def __init__(self, ctx: Context, text: str, name: str):
        self._file = name
        self._text = text
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self._frames: list[_Frame] = []
        self._first_use: dict[str, Span[str]] = {}  # name -> first use, for undefined values
        self._defined_at: dict[str, Span[str]] = {}  # name -> definition
        self._types: dict[str, Attribute] = {}  # `tensor<16x32xf32>` -> its type
        super().__init__(ctx, "", name)
        self._parser_state = ParserState(_LinearLexer(Input(text, name)))

    def loc(self, span: Span[str]) -> SourceLoc:
        """The location of a span (line lookup by bisection: linear time over a whole file)."""
        line = bisect_right(self._line_starts, span.start)
        col = span.start - self._line_starts[line - 1] + 1
        return SourceLoc(self._file, line, col, max(1, span.end - span.start))

    def parse_operation(self) -> Operation:
        start = self._current_token.span
        frame = _Frame()
        self._frames.append(frame)
        try:
            op = super().parse_operation()
        finally:
            self._frames.pop()
        if not isinstance(op.location, FileLineColLoc):
            op.location = self.loc(start).to_attr()
        for result in op.results:
            if result.name_hint is not None:
                self._defined_at.setdefault(result.name_hint, start)
        is_function = isinstance(op, func.FuncOp)
        if is_function:
            entry = op.body.blocks.first
            for arg, span in zip(entry.args if entry is not None else (), frame.args):
                arg.location = self.loc(span).to_attr()
            if frame.results is not None:
                remember_part(op, "results", self.loc(frame.results))
        for owner, key, span in frame.attribute_entries:
            # Only a function's dictionaries have owners: any other op's are its own.
            remember_part(op, attribute_part(key, owner if is_function else None), self.loc(span))
        for name, span in frame.forward_uses:  # for `verify`'s use-before-definition error
            remember_part(op, f"use %{name}", self.loc(span))
        return op

    # Types by their text: a program repeats a few types thousands of times, and xDSL's
    # token-by-token type parse is most of the parse time of a large program.

    def parse_optional_type(self):  # type: ignore[override]
        if self._current_token.kind != MLIRTokenKind.BARE_IDENT or self._current_token.text != "tensor":
            return super().parse_optional_type()
        return self._cached(_PLAIN_TENSOR_TYPE, super().parse_optional_type)

    def parse_optional_function_type(self):  # type: ignore[override]
        if self._current_token.kind != MLIRTokenKind.L_PAREN:
            return None
        return self._cached(_PLAIN_FUNCTION_TYPE, super().parse_optional_function_type)

    def _cached(self, pattern: re.Pattern[str], parse: Callable[[], _ParsedType | None]) -> _ParsedType | None:
        """The type written at the current token, from the cache when `pattern` matches it
        (then the lexer jumps past it), else parsed and remembered."""
        match = pattern.match(self.lexer.input.content, self._current_token.span.start)
        if match is None:
            return parse()
        cached = self._types.get(match.group())
        if cached is None:
            cached = parse()
            if cached is not None and self._current_token.span.start >= match.end():
                self._types[match.group()] = cached
            return cached
        self.lexer.pos = match.end()
        self._parser_state.current_token = self.lexer.lex()
        return cast(_ParsedType, cached)  # (remembered from `parse` for this very text)

    def parse_optional_argument(self, expect_type: bool = True):  # type: ignore[override]
        token = self._current_token
        arg = super().parse_optional_argument(expect_type)
        if arg is not None:
            if self._frames:
                self._frames[-1].args.append(token.span)
            self._defined_at.setdefault(token.text[1:], token.span)
        return arg

    def parse_optional_punctuation(self, punctuation):  # type: ignore[override]
        found = super().parse_optional_punctuation(punctuation)
        if found is not None and punctuation == "->" and self._frames and self._frames[-1].results is None:
            self._frames[-1].results = self._current_token.span
        return found

    def parse_optional_attr_dict_with_keyword(self, reserved_attr_names=()):  # type: ignore[override]
        frame = self._frames[-1] if self._frames else None
        if frame is not None:
            frame.in_keyword_dict = True
        try:
            return super().parse_optional_attr_dict_with_keyword(reserved_attr_names)
        finally:
            if frame is not None:
                frame.in_keyword_dict = False

    def parse_optional_dictionary_attr_dict(self) -> dict[str, Attribute]:
        frame = self._frames[-1] if self._frames else None
        if frame is None:
            return super().parse_optional_dictionary_attr_dict()
        if frame.dict_depth == 0:
            frame.dict_owner = frame.owner_of_next_dictionary()
        frame.dict_depth += 1
        try:
            return super().parse_optional_dictionary_attr_dict()
        finally:
            frame.dict_depth -= 1

    def _parse_attribute_entry(self):  # type: ignore[override]
        start = self._current_token.span
        key, value = super()._parse_attribute_entry()
        frame = self._frames[-1] if self._frames else None
        if frame is not None and frame.dict_depth == 1:  # an entry at the op's level, not in a value
            frame.attribute_entries.append((frame.dict_owner, key, start))
        return key, value

    def resolve_operand(self, operand, type):  # type: ignore[override]
        name = operand.operand_name
        if name not in self.ssa_values:
            self._first_use.setdefault(name, operand.span)
            if self._frames:
                self._frames[-1].forward_uses.append((name, operand.span))
        try:
            return super().resolve_operand(operand, type)
        except ParseError as e:
            if "previously used or defined" not in e.msg:
                raise
            values = self.ssa_values.get(name)
            if values is not None and operand.index < len(values) and name in self._defined_at:
                defined = values[operand.index]
                if isinstance(defined, OpResult):  # the definition may be what is wrong
                    _verify_definition(defined.op, Note(f"%{name} is used here as {type}", self.loc(operand.span)))
                line = self.loc(self._defined_at[name]).line
                self.raise_error(
                    f"%{name} is used here as {type}, but line {line} defines it as {defined.type}", operand.span
                )
            raise

    def undefined_value_error(self) -> tuple[str, SourceLoc] | None:
        """The first use of a value that is never defined, after `parse_module` failed on it."""
        names = [n for n in self.forward_ssa_references if n in self._first_use]
        if not names:
            return None
        first = min(names, key=lambda n: self._first_use[n].start)
        others = [f"%{n}" for n in names if n != first]
        also = f" (also undefined: {', '.join(others)})" if others else ""
        return f"use of undefined value %{first}{also}", self.loc(self._first_use[first])


@dataclass
class _Frame:
    """What one op's parse saw at its own level."""

    args: list[Span[str]] = field(default_factory=list[Span[str]])
    results: Span[str] | None = None  # the first token after the op's `->`
    in_keyword_dict: bool = False
    # The operands not defined yet, for `verify`'s use-before-definition error.
    forward_uses: list[tuple[str, Span[str]]] = field(default_factory=list[tuple[str, Span[str]]])
    # The names in the op's attribute dictionaries, with the argument or result of a function
    # whose dictionary each is in (None: the op's own), as `attribute_part` names them.
    attribute_entries: list[tuple[str | None, str, Span[str]]] = field(
        default_factory=list[tuple[str | None, str, Span[str]]]
    )
    dict_depth: int = 0  # > 1 inside a dictionary that is an attribute's value
    dict_owner: str | None = None  # the owner of the dictionary being parsed
    result_dicts: int = 0  # the dictionaries after the `->` so far: one per result

    def owner_of_next_dictionary(self) -> str | None:
        """Whose dictionary starts here, read as a function's: after an argument, that
        argument's; after the `->`, the next result's (counted here); after `attributes`, the
        op's own."""
        if self.in_keyword_dict:
            return None
        if self.results is not None:
            self.result_dicts += 1
            return f"result {self.result_dicts - 1}"
        if self.args:
            return f"arg {len(self.args) - 1}"
        return None


def attribute_part(key: str, owner: str | None = None) -> str:
    """The part name (`remember_part`) of attribute `key` in the dictionary of `owner`
    (`"arg 0"`, `"result 1"`), or in the op's own dictionary."""
    return key if owner is None else f"{owner} {key}"


@contextmanager
def no_gc():
    """Without the cycle collector for a while: building or walking a large IR allocates many
    objects that live on, and each collection re-traverses all of them (a third of the parse
    time of a 10,000-op program). Reference counting still frees everything else."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def parse_text(text: str, name: str = "<stdin>") -> ModuleOp:
    """Parse a program; a syntax error becomes a located `StepcError`."""
    remember_source(name, text)
    if not text.strip() or all(line.strip().startswith("//") or not line.strip() for line in text.splitlines()):
        raise StepcError("the file holds no program (expected a func.func)", SourceLoc(name, 1, 1))
    parser = None
    try:
        parser = LocatedParser(make_context(), text, name)  # lexes the first token: may fail
        with no_gc():
            return parser.parse_module()
    except ParseError as e:
        if parser is not None and e.msg.startswith("values used but not defined"):
            undefined = parser.undefined_value_error()
            if undefined is not None:
                raise StepcError(*undefined) from None
        loc = SourceLoc.from_offset(name, text, e.span.start, e.span.end - e.span.start)
        code_end = _code_end(text)
        if e.span.start >= code_end:  # at the end of the file: point just after its last code
            loc = SourceLoc.from_offset(name, text, code_end)
        unknown = re.fullmatch(r"Operation (\S+) is not registered", e.msg.strip())
        if unknown is not None:  # xDSL points past the name: point at the name itself
            start = text.rfind(unknown.group(1), 0, e.span.start + 1)
            if start >= 0:
                loc = SourceLoc.from_offset(name, text, start, len(unknown.group(1)))
        message = _clean_parse_message(e.msg, text[e.span.start : e.span.end])
        if "\n" not in text[e.span.start : code_end] and not text[:code_end].endswith("}"):
            message += " (the file ends here: is it truncated?)"
        raise StepcError(message, loc) from None
    except RecursionError:
        offset = parser.pos if parser is not None else 0
        raise StepcError("the program nests too deeply to parse", SourceLoc.from_offset(name, text, offset)) from None
    except (VerifyException, ValueError, OverflowError) as e:  # an attribute refused while parsing (axis 1e30)
        offset = parser.pos if parser is not None else 0
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        loc = SourceLoc.from_offset(name, text, offset)
        number = re.search(r"Integer value (-?\d+)", message)
        if number is not None and (start := text.rfind(number.group(1), 0, offset)) >= 0:
            loc = SourceLoc.from_offset(name, text, start, len(number.group(1)))  # at the number itself
        raise StepcError(message, loc) from None


def _code_end(text: str) -> int:
    """The offset just after the last character of code (not whitespace, not a `//` comment)."""
    end = len(text)
    while True:
        while end > 0 and text[end - 1].isspace():
            end -= 1
        line_start = text.rfind("\n", 0, end) + 1
        comment = text.find("//", line_start, end)
        if comment < 0:
            return end
        end = comment  # (a `//` inside a string literal is not a comment, but ends no program)


def _clean_parse_message(msg: str, token: str = "") -> str:
    msg = msg.strip()
    if msg.startswith("Operation ") and msg.endswith(" is not registered"):
        name = msg[len("Operation ") : -len(" is not registered")]
        return f"unknown operation '{name}'"
    if msg.startswith("values used but not defined"):
        return "use of undefined value" + msg[len("values used but not defined") :]
    if "{first_char}" in msg:  # an unformatted message in xDSL's lexer
        msg = msg.replace("{first_char}", f"'{token[:1]}'")
    return msg


def verify(module: ModuleOp) -> None:
    """Verify every op, innermost first, reporting the first failure at its op; then check
    that every value is defined before it is used (xDSL's parser accepts forward uses).
    Attribute names are checked on the way in, outermost first, as they are written."""
    with no_gc():
        undefined: list[tuple[SSAValue, Operation]] = []
        check_attribute_names(module)
        _verify_nested(module, set(), undefined)
        _verify_op(module, is_last=False)
    if undefined:
        value, user = undefined[0]
        where = part_location(user, f"use %{value.name_hint}") if value.name_hint else location_of(user)
        raise StepcError(_use_before_definition(value), where)


def _verify_nested(op: Operation, visible: set[SSAValue], undefined: list[tuple[SSAValue, Operation]]) -> None:
    """Verify the ops inside `op`, innermost first, in one walk that also records the first
    use of a value not defined before it (straight-line dominance: an operand is a block
    argument, a value of an enclosing block, or the result of an earlier op). `visible` grows
    by each block's values while the block is walked and is left as it was found."""
    for region in op.regions:
        for block in region.blocks:
            defined: list[SSAValue] = list(block.args)
            visible.update(defined)
            last = block.last_op
            for inner in block.ops:
                if not undefined:
                    for operand in inner.operands:
                        if operand not in visible:
                            undefined.append((operand, inner))
                            break
                check_attribute_names(inner)
                if inner.regions:
                    _verify_nested(inner, visible, undefined)
                _verify_op(inner, is_last=inner is last)
                results = inner.results
                visible.update(results)
                defined.extend(results)
            visible.difference_update(defined)


def check_attribute_names(op: Operation) -> None:
    """Every `step.*` attribute of `op` is a name stepc knows, written where it belongs
    (`dialect.STEP_ATTRIBUTES`): on a function, its arguments and results too."""
    if isinstance(op, func.FuncOp):
        _check_function_attribute_names(op)
    else:
        _check_names(op, op.attributes, Position.OP, op.name, None)


def _check_function_attribute_names(fn: func.FuncOp) -> None:
    """The attribute names of a function in the order they are written: on its arguments, on
    its results, on itself. Read through `properties` because the func.func verifier, which
    rejects a malformed list in the generic form, has not run yet."""
    name = fn.properties.get("sym_name")
    function = f"function @{name.data}" if isinstance(name, StringAttr) else "the function"
    entry = fn.body.blocks.first
    block_args = entry.args if entry is not None else ()  # (a declaration has no block)
    for i, attrs in enumerate(_dictionaries(fn.properties.get("arg_attrs"))):
        where = f"argument %{arg_name(block_args[i])}" if i < len(block_args) else f"argument {i} of {function}"
        _check_names(fn, attrs, Position.ARGUMENT, where, f"arg {i}")
    for i, attrs in enumerate(_dictionaries(fn.properties.get("res_attrs"))):
        _check_names(fn, attrs, Position.RESULT, f"result {i} of {function}", f"result {i}")
    _check_names(fn, fn.attributes, Position.FUNCTION, function, None)


def _dictionaries(attrs: Attribute | None) -> list[Mapping[str, Attribute]]:
    """The dictionaries of an `arg_attrs` or `res_attrs` list, in order; what is not a
    dictionary reads as an empty one (the func.func verifier reports it)."""
    if not isinstance(attrs, ArrayAttr):
        return []
    entries = cast(ArrayAttr[Attribute], attrs).data
    return [a.data if isinstance(a, DictionaryAttr) else {} for a in entries]


def _check_names(
    op: Operation, attrs: Mapping[str, Attribute], position: Position, where: str, owner: str | None
) -> None:
    """The names in one dictionary of `op`: that of `owner` (an argument or a result), or the op's own."""
    for key in attrs:
        message = attribute_name_error(key, position, where)
        if message is not None:
            raise StepcError(message, part_location(op, attribute_part(key, owner)))


def _verify_definition(op: Operation, use: Note) -> None:
    """Verify the op that defines a value used with another type, reporting a failure there:
    when its own rule says its written result type is wrong, the fault is the op's, not the use's."""
    try:
        _verify_op(op, is_last=False)
    except StepcError as e:
        raise StepcError(e.message, e.loc, (*e.notes, use)) from None


def _verify_op(op: Operation, is_last: bool) -> None:
    """One op's verifier (not its nested ops'), skipped for a signature verified before."""
    signature = None if is_last else _local_signature(op)  # the terminator rule looks at the block
    if signature is not None and _VERIFIED.holds(signature):
        return
    try:
        op.verify(verify_nested_ops=False)
    except VerifyException as e:
        raise StepcError(_clean_verify_message(op, str(e)), _verify_location(op, str(e))) from None
    if signature is not None:
        _VERIFIED.add(signature)


class _Signatures:
    """The signatures of ops that passed their verifier.

    An op whose class declares `LOCAL_VERIFIER = True` (every step and StableHLO op without a
    region: traits that check nothing, a verifier that reads only the op itself) is valid or
    not by its signature alone: its class, operand types, result types, properties and
    attributes. The pipeline verifies the whole program after every pass and a program
    repeats a few signatures thousands of times, so each signature is verified once. What a
    signature does not cover (an erased operand, the op that ends a block) is left to the
    full verifier every time.

    Attributes hash by value, recursively and without caching (microseconds each), so a
    signature is first looked up by the identities of its parts (the parser, the shape rules
    and `clone` share attribute objects), then by value. The identity table keeps the parts
    alive so that their ids stay theirs.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.by_value: set[tuple[object, ...]] = set()
        self.by_identity: dict[tuple[int, ...], tuple[object, ...]] = {}

    def holds(self, signature: tuple[object, ...]) -> bool:
        identity = tuple(map(id, signature))
        if identity in self.by_identity:
            return True
        try:
            if signature not in self.by_value:
                return False
        except TypeError:  # an attribute that cannot be hashed: never remembered
            return False
        self._remember_identity(identity, signature)
        return True

    def add(self, signature: tuple[object, ...]) -> None:
        try:
            hash(signature)
        except TypeError:
            return
        if len(self.by_value) >= self.limit:
            self.by_value.clear()
        self.by_value.add(signature)
        self._remember_identity(tuple(map(id, signature)), signature)

    def _remember_identity(self, identity: tuple[int, ...], signature: tuple[object, ...]) -> None:
        if len(self.by_identity) >= self.limit:
            self.by_identity.clear()
        self.by_identity[identity] = signature


_VERIFIED = _Signatures(limit=1 << 16)
_LOCAL_CLASSES: dict[type[Operation], bool] = {}


def _local_signature(op: Operation) -> tuple[object, ...] | None:
    """What decides whether `op` (not the last op of its block) verifies, when that is all
    there is to it (else None): its class, operand types, result types, properties and
    attributes, the groups apart."""
    cls = type(op)
    local = _LOCAL_CLASSES.get(cls)
    if local is None:
        local = _LOCAL_CLASSES[cls] = _has_local_verifier(cls)
    if not local or op.regions or op.successor_uses:
        return None
    parts: list[object] = [cls]
    for operand in op.operands:
        if type(operand) is ErasedSSAValue:
            return None
        parts.append(operand.type)
    parts.append(_END)
    for result in op.results:
        parts.append(result.type)
    parts.append(_END)
    for item in op.properties.items():
        parts.extend(item)
    parts.append(_END)
    for item in op.attributes.items():
        parts.extend(item)
    return tuple(parts)


_END = object()  # ends a group of a signature


def _has_local_verifier(cls: type[Operation]) -> bool:
    if not getattr(cls, "LOCAL_VERIFIER", False) or not issubclass(cls, IRDLOperation):
        return False
    op_def = cls.get_irdl_definition()
    traits_check_nothing = all(type(trait).verify is OpTrait.verify for trait in op_def.traits)
    return traits_check_nothing and not op_def.regions and not op_def.successors


def _use_before_definition(value: SSAValue) -> str:
    name = f"%{value.name_hint}" if value.name_hint else "a value"
    if isinstance(value, OpResult):
        where = location_of(value.op)
        if where is not None:
            return f"{name} is used before its definition on line {where.line}"
    return f"{name} is used before it is defined"


def _verify_location(op: Operation, msg: str) -> SourceLoc | None:
    if msg.startswith("Redefinition of symbol"):  # the module has no location: point at the second definition
        seen: set[str] = set()
        for inner in op.regions[0].ops if op.regions else ():
            name = inner.properties.get("sym_name") or inner.attributes.get("sym_name")
            if isinstance(name, StringAttr):
                if name.data in seen:
                    return location_of(inner)
                seen.add(name.data)
    return location_of(op)


def _clean_verify_message(op: Operation, msg: str) -> str:
    msg = msg.strip().splitlines()[0] if msg.strip() else f"{op.name} is invalid"
    if "terminates block in single-block region but is not a terminator" in msg:
        return f"the function body ends with {op.name}: it must end with func.return of the loss"
    if msg.startswith("Redefinition of symbol"):
        return "a second function named " + msg.removeprefix("Redefinition of symbol ").strip()
    if not msg.startswith(op.name) and not msg.startswith("step."):
        msg = f"{op.name}: {msg}"
    return msg


def load_text(text: str, name: str) -> ModuleOp:
    """Parse and verify a program as a user wrote it (all the function-level rules too)."""
    module = parse_text(text, name)
    verify(module)
    verify_step_function(step_function(module))
    return module


def read_source(path: str | Path) -> tuple[str, str]:
    """The text and display name of a program file (`-` is stdin); bad bytes are located errors.

    At most `MAX_SOURCE_BYTES` + 1 bytes are ever read, from a regular file, a device
    (`/dev/zero`), a FIFO or stdin alike: one byte over the limit is the error."""
    import sys

    name = str(path)
    if name == "-":
        data = _read_capped(sys.stdin.buffer, "<stdin>")
        name = "<stdin>"
    else:
        data = read_file_bytes(path)
    return decode_source(data, name), name


def read_file_bytes(path: str | Path) -> bytes:
    """The bytes of a program file (never stdin: a file named `-` is that file), at most
    `MAX_SOURCE_BYTES`; a path that cannot be read is a `StepcError` saying why."""
    name = str(path) or "''"
    if "\0" in str(path):
        raise StepcError(f"no such file: {name!r} (a path cannot hold a NUL character)")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise StepcError(f"no such file: {name}") from None
    except OSError as e:
        raise StepcError(f"cannot read {name}: {e.strerror or e}") from None
    if stat.S_ISDIR(info.st_mode):
        raise StepcError(f"{name} is a directory, expected a .ir file")
    if stat.S_ISREG(info.st_mode) and info.st_size > MAX_SOURCE_BYTES:
        raise StepcError(f"{name} is {info.st_size} bytes, over the {MAX_SOURCE_BYTES}-byte limit for a program")
    try:
        with open(path, "rb") as f:
            return _read_capped(f, name)
    except OSError as e:
        raise StepcError(f"cannot read {name}: {e.strerror or e}") from None


def _read_capped(stream: BinaryIO, name: str) -> bytes:
    """At most `MAX_SOURCE_BYTES` bytes of `stream`; one more is the error (a device or a pipe
    has no size to check first)."""
    limit = MAX_SOURCE_BYTES
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = stream.read(min(1 << 20, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise StepcError(f"{name} holds more than {limit} bytes, over the {limit}-byte limit for a program")
    return b"".join(chunks)


def decode_source(data: bytes, name: str) -> str:
    """A program's bytes as text: NUL bytes and invalid UTF-8 are errors located in `name`."""
    if b"\x00" in data:  # binary: say so at the first NUL, before any decoding complaint
        first = data.index(b"\x00")
        shown = data.decode("utf-8", "replace").replace("\x00", " ")
        remember_source(name, shown)
        prefix = data[:first].decode("utf-8", "replace")
        raise StepcError("the file holds NUL bytes: it is binary, not a program", SourceLoc.from_offset(name, prefix, len(prefix)))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        prefix = data[: e.start].decode("utf-8", "replace")
        remember_source(name, data.decode("utf-8", "replace"))
        raise StepcError(
            f"the file is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})",
            SourceLoc.from_offset(name, prefix, len(prefix)),
        ) from None
    check_source_text(text, name)
    return text


def check_source_text(text: str, name: str) -> None:
    """What any program text must be before parsing: at most `MAX_SOURCE_BYTES` (in UTF-8), no NUL."""
    if len(text) > MAX_SOURCE_BYTES or (len(text) * 4 > MAX_SOURCE_BYTES and len(text.encode()) > MAX_SOURCE_BYTES):
        raise StepcError(f"{name} is over the {MAX_SOURCE_BYTES}-byte limit for a program")
    if "\x00" in text:
        remember_source(name, text.replace("\x00", " "))
        raise StepcError(
            "the file holds NUL bytes: it is binary, not a program",
            SourceLoc.from_offset(name, text, text.index("\x00")),
        )


def load(path: str | Path) -> ModuleOp:
    text, name = read_source(path)
    return load_text(text, name)


def parse_module(text: str, name: str = "<stablehlo>") -> ModuleOp:
    """Parse a lowered module's text (`ir.stablehlo.module_text`) back, with locations."""
    remember_source(name, text)
    try:
        return LocatedParser(make_context(), text, name).parse_module()
    except ParseError as e:
        raise StepcError(e.msg.strip(), SourceLoc.from_offset(name, text, e.span.start)) from None
