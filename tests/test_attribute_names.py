"""Attribute names and the op a type error belongs to.

Every `step.*` attribute name is checked against the one table of names
(`stepc.ir.dialect.STEP_ATTRIBUTES`): a misspelt one is a located error that suggests the
nearest name, a name of the spec this version does not implement is refused as such, a name
in the wrong place says where it belongs; everything the passes write reads back. And when a
value is used with another type than its definition writes, the error goes to the definition
when the definition breaks its own shape rule, the use being a note.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from stepc.ir.diagnostics import StepcError
from stepc.ir.dialect import STEP_ATTRIBUTES, Position
from stepc.ir.parse import load, load_text, parse_text, verify

ROOT = Path(__file__).parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.ir"))
SPEC = ROOT.parent / "shared" / "spec" / "step-ir.md"


def program(
    param: str = "{step.param}",
    attributes: str = "step.sgd = #step.sgd<lr = 0.1>",
    results: str = "tensor<f32>",
    body: str = "  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>\n",
    returned: str = "%loss : tensor<f32>",
) -> str:
    """A small step, one part of it replaced: line 1 holds the arguments and results, line 2
    the function attributes, the body starts on line 3."""
    return (
        f"func.func @f(%w: tensor<4x3xf32> {param}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> {results}\n"
        f"    attributes {{{attributes}}} {{\n"
        f"{body}"
        f"  func.return {returned}\n"
        "}\n"
    )


def error_of(source: str) -> StepcError:
    with pytest.raises(StepcError) as caught:
        load_text(source, "case.ir")
    return caught.value


# ---------------------------------------------------------------------------------------------
# Attribute names


@dataclass
class NameCase:
    name: str
    source: str
    marked: str  # the text the caret marks: the attribute's name as written
    message: str  # the whole message


NAME_CASES = [
    NameCase(
        "misspelt function attribute",
        program(attributes="step.sgd = #step.sgd<lr = 0.1>, step.clip_grad_nrom = 1.0 : f64"),
        "step.clip_grad_nrom",
        "unknown attribute 'step.clip_grad_nrom' on function @f; did you mean 'step.clip_grad_norm'?",
    ),
    NameCase(
        "misspelt optimizer",
        program(attributes="step.sdg = #step.sgd<lr = 0.1>"),
        "step.sdg",
        "unknown attribute 'step.sdg' on function @f; did you mean 'step.sgd'?",
    ),
    NameCase(
        "misspelt argument attribute",
        program(param="{step.parm}"),
        "step.parm",
        "unknown attribute 'step.parm' on argument %w; did you mean 'step.param'?",
    ),
    NameCase(
        "misspelt argument attribute, quoted",
        program(param='{"step.parm"}'),
        '"step.parm"',
        "unknown attribute 'step.parm' on argument %w; did you mean 'step.param'?",
    ),
    NameCase(
        "misspelt second argument attribute",
        program(param='{step.param, step.hypr = "lr"}'),
        "step.hypr",
        "unknown attribute 'step.hypr' on argument %w; did you mean 'step.hyper'?",
    ),
    NameCase(
        "misspelt result attribute",
        program(results='(tensor<f32> {step.output = "loss"}, tensor<4x3xf32> {step.ouptut = "grad.w"})',
                returned="%loss, %w : tensor<f32>, tensor<4x3xf32>"),
        "step.ouptut",
        "unknown attribute 'step.ouptut' on result 1 of function @f; did you mean 'step.output'?",
    ),
    NameCase(
        "unknown op attribute",
        program(body="  %loss = step.sum %w {step.fast} : tensor<4x3xf32> -> tensor<f32>\n"),
        "step.fast",
        "unknown attribute 'step.fast' on step.sum; the op attributes are step.relu",
    ),
    NameCase(
        "function attribute on an argument",
        program(param="{step.param, step.sgd = #step.sgd<lr = 0.5>}"),
        "step.sgd",
        "attribute 'step.sgd' (the optimizer, torch.optim.SGD) is written on the function, not on argument %w: "
        + STEP_ATTRIBUTES["step.sgd"].example,
    ),
    NameCase(
        "result attribute on an argument",
        program(param='{step.param, step.output = "w"}'),
        "step.output",
        "attribute 'step.output' (the key of a result) is written on a result, not on argument %w: "
        + STEP_ATTRIBUTES["step.output"].example,
    ),
]  # fmt: skip


def _position_case(name: str) -> NameCase:
    """`name`, a spec name this version does not implement, written where it belongs."""
    position = STEP_ATTRIBUTES[name].position
    if position == Position.FUNCTION:
        source = program(attributes=f"step.sgd = #step.sgd<lr = 0.1>, {name} = 1.0 : f64")
    else:
        assert position == Position.ARGUMENT, name
        source = program(param=f'{{step.param, {name} = "lr"}}')
    message = f"attribute '{name}' ({STEP_ATTRIBUTES[name].meaning}) is not supported yet by this version of stepc"
    return NameCase(f"unsupported {name}", source, name, message)


NAME_CASES += [_position_case(n) for n, a in STEP_ATTRIBUTES.items() if not a.supported]


@pytest.mark.parametrize("case", NAME_CASES, ids=lambda c: c.name)
def test_attribute_name_is_a_located_error(case: NameCase) -> None:
    error = error_of(case.source)
    assert error.message == case.message
    assert error.loc is not None
    line = case.source.split("\n")[error.loc.line - 1]
    assert line[error.loc.col - 1 :].startswith(case.marked), error.render()
    # The rendered caret spans the name.
    header, shown, caret = error.render().split("\n")[:3]
    assert header == f"case.ir:{error.loc.line}:{error.loc.col}: error: {case.message}"
    assert shown == line
    assert caret == " " * (error.loc.col - 1) + "^" + "~" * (len(case.marked) - 1)


def spec_attribute_names(text: str) -> set[str]:
    """The `step.*` attribute names a spec text writes: dictionary keys (`{step.param}`,
    `{step.sgd = ...}`, `` `step.clip_grad_norm = 1.0 : f64` ``) and the optimizers, each
    written under the key of its own name (`#step.adam<...>`)."""
    keys = re.findall(r"[{,] ?(step\.\w+)(?: =|})", text) + re.findall(r"`(step\.\w+) = ", text)
    optimizers = re.findall(r"#(step\.\w+)<", text)
    return set(keys) | set(optimizers)


def test_every_name_of_the_spec_is_known() -> None:
    if not SPEC.exists():  # (the spec sits beside the repository in the development tree)
        pytest.skip(f"no spec at {SPEC}")
    names = spec_attribute_names(SPEC.read_text())
    assert {"step.sgd", "step.adam", "step.clip_grad_norm", "step.param", "step.hyper"} <= names  # the regexes work
    assert names <= set(STEP_ATTRIBUTES), names - set(STEP_ATTRIBUTES)


def test_other_dialects_names_are_left_alone() -> None:
    load_text(program(attributes="step.sgd = #step.sgd<lr = 0.1>, llvm.emit_c_interface"), "case.ir")


@pytest.mark.parametrize(
    "properties, message",
    [
        ('sym_name = "f", arg_attrs = [1 : i64]', "func.func: 1 : i64 should be of base attribute dictionary"),
        ('res_attrs = [{step.outptu = "loss"}]', "unknown attribute 'step.outptu' on result 0 of the function"),
    ],
    ids=["not a dictionary", "no name"],
)
def test_a_malformed_generic_function_is_an_error_not_a_crash(properties: str, message: str) -> None:
    """The names are checked before the func.func verifier runs: on whatever the generic form holds."""
    source = (
        f'"func.func"() <{{function_type = (tensor<4xf32>) -> tensor<f32>, {properties}}}> ({{\n'
        "^bb0(%w: tensor<4xf32>):\n"
        "  %loss = step.sum %w : tensor<4xf32> -> tensor<f32>\n"
        "  func.return %loss : tensor<f32>\n"
        "}) : () -> ()\n"
    )
    assert error_of(source).message.startswith(message)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_pass_dump_reads_back(path: Path, tmp_path: Path) -> None:
    """Each stage of each example, as `--dump-dir` writes it, parses and verifies: every
    `step.*` name a pass writes is in the table, where the pass writes it."""
    result = subprocess.run(
        [sys.executable, "-m", "stepc.tools.cli", "compile", str(path), "--no-check",
         "--dump-dir", str(tmp_path / "dumps"), "-o", str(tmp_path / "out.mlir")],
        check=False, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    dumps = sorted((tmp_path / "dumps").glob("*.mlir"))
    assert len(dumps) >= 5, dumps  # the input and at least the spec's four passes
    load(path)
    for dump in dumps:
        verify(parse_text(dump.read_text(), str(dump)))


# ---------------------------------------------------------------------------------------------
# A use whose type disagrees with its definition


@dataclass
class DefinitionCase:
    name: str
    body: str  # line 3 defines %y, line 4 uses it
    message: str  # the definition's error, at line 3
    use: str  # the note, at the use on line 4


DEFINITION_CASES = [
    DefinitionCase(
        "matmul",
        "  %y = step.matmul %x, %w : (tensor<8x4xf32>, tensor<4x3xf32>) -> tensor<8x4xf32>\n"
        "  %loss = step.sum %y : tensor<8x3xf32> -> tensor<f32>\n",
        "step.matmul result type: expected tensor<8x3xf32>, found tensor<8x4xf32>",
        "%y is used here as tensor<8x3xf32>",
    ),
    DefinitionCase(
        "broadcasting add",
        "  %y = step.add %x, %x : (tensor<8x4xf32>, tensor<8x4xf32>) -> tensor<4xf32>\n"
        "  %loss = step.sum %y : tensor<8x4xf32> -> tensor<f32>\n",
        "step.add result type: expected tensor<8x4xf32>, found tensor<4xf32>",
        "%y is used here as tensor<8x4xf32>",
    ),
    DefinitionCase(
        "transpose",
        "  %y = step.transpose %w perm [1, 0] : tensor<4x3xf32> -> tensor<4x3xf32>\n"
        "  %loss = step.sum %y : tensor<3x4xf32> -> tensor<f32>\n",
        "step.transpose result type: expected tensor<3x4xf32>, found tensor<4x3xf32>",
        "%y is used here as tensor<3x4xf32>",
    ),
    DefinitionCase(
        "reduction",
        "  %y = step.mean %x dims [1] : tensor<8x4xf32> -> tensor<4xf32>\n"
        "  %loss = step.sum %y : tensor<8xf32> -> tensor<f32>\n",
        "step.mean result type: expected tensor<8xf32>, found tensor<4xf32>",
        "%y is used here as tensor<8xf32>",
    ),
    DefinitionCase(
        "broken contraction",
        "  %y = step.matmul %w, %w : (tensor<4x3xf32>, tensor<4x3xf32>) -> tensor<4x4xf32>\n"
        "  %loss = step.sum %y : tensor<4x3xf32> -> tensor<f32>\n",
        "matmul contraction mismatch: lhs 4x3 has k = 3, rhs 4x3 has k = 4",
        "%y is used here as tensor<4x3xf32>",
    ),
]


@pytest.mark.parametrize("case", DEFINITION_CASES, ids=lambda c: c.name)
def test_a_definition_that_breaks_its_rule_is_the_error(case: DefinitionCase) -> None:
    error = error_of(program(body=case.body))
    assert error.message.endswith(case.message), error.render()
    assert error.loc is not None and (error.loc.line, error.loc.col) == (3, 3), error.render()
    lines = error.render().split("\n")
    use_col = case.body.split("\n")[1].index("%y") + 1
    assert lines[3] == f"case.ir:4:{use_col}: note: {case.use}", error.render()
    assert lines[5] == " " * (use_col - 1) + "^~"


def test_a_wrong_use_of_a_right_definition_is_the_use() -> None:
    error = error_of(program(body="  %y = step.matmul %x, %w : (tensor<8x4xf32>, tensor<4x3xf32>) -> tensor<8x3xf32>\n"
                                  "  %loss = step.sum %y : tensor<8x4xf32> -> tensor<f32>\n"))  # fmt: skip
    assert error.message == "%y is used here as tensor<8x4xf32>, but line 3 defines it as tensor<8x3xf32>"
    assert error.loc is not None and (error.loc.line, error.loc.col) == (4, 20)
    assert error.notes == ()


def test_a_wrong_result_type_at_the_return_is_the_definitions() -> None:
    error = error_of(program(
        body="  %loss = step.cross_entropy %x, %labels : (tensor<8x4xf32>, tensor<8xi32>) -> tensor<8xf32>\n"
    ))  # fmt: skip
    assert error.message == "step.cross_entropy result type: expected tensor<f32>, found tensor<8xf32>"
    assert error.loc is not None and (error.loc.line, error.loc.col) == (3, 3)
    assert "case.ir:4:15: note: %loss is used here as tensor<f32>" in error.render()
