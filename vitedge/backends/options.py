"""Typed compile options: one dataclass per backend, the single source of its flags.

A backend declares `Options`, a frozen dataclass whose fields carry a type, a default, a
help line and their rules (`option(...)`). From the registered classes come the `vitedge
compile` flags (`cli_parameters`), the recipe's `targets[].options` JSON Schema
(`json_schema`) and the validation of values from any caller (`parse_options`), so the
three can never disagree. A value a backend does not take is an error that names the
backends that do take it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitedge.errors import BadInput

_SPEC = "vitedge.option"
_SCALARS = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "string"}


@dataclass(frozen=True)
class Spec:
    """How one option is shown and checked (its type and default live on the dataclass field)."""

    help: str
    flag: str | None = None  # CLI flag when it is not --<field-name>
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    rule: str | None = None  # how the allowed values read in an error ("0-5 (TensorRT's ...)")
    path: bool = False  # a file or folder: recipes resolve it against the recipe's folder
    must_exist: bool = False


def option(default: Any, help: str, **rules: Any) -> Any:
    """A dataclass field with its help and rules (see `Spec`)."""
    spec = Spec(help=help, **rules)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={_SPEC: spec})
    return field(default=default, metadata={_SPEC: spec})


@dataclass(frozen=True)
class Options:
    """A backend that takes no options."""


@dataclass(frozen=True)
class OptionInfo:
    """One option field, resolved: name, Python type, default, spec."""

    name: str
    kind: type  # bool, int, float, str, Path or list (of str)
    optional: bool
    default: Any
    spec: Spec

    @property
    def flag(self) -> str:
        return self.spec.flag or "--" + self.name.replace("_", "-")

    def annotation(self) -> Any:
        """The type the CLI parameter gets (always optional: None means "not given")."""
        return (list[str] if self.kind is list else self.kind) | None

    def schema(self) -> dict[str, Any]:
        """JSON Schema of the value."""
        if self.kind is list:
            out: dict[str, Any] = {"type": "array", "items": {"type": "string", "minLength": 1}}
        else:
            out = {"type": _SCALARS[self.kind]}
        if self.spec.choices:
            out = {"enum": list(self.spec.choices)}
        for key, value in (("minimum", self.spec.minimum), ("maximum", self.spec.maximum),
                           ("exclusiveMinimum", self.spec.exclusive_minimum),
                           ("exclusiveMaximum", self.spec.exclusive_maximum)):
            if value is not None:
                out[key] = value
        if self.spec.path:
            out["minLength"] = 1
        if self.optional:  # null means "not given"; range keywords ignore it
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
            else:
                out["type"] = [out["type"], "null"]
        out["description"] = self.spec.help
        return out


def fields_of(options_class: type[Options]) -> list[OptionInfo]:
    """The option fields of an Options dataclass, with their resolved types."""
    hints = typing.get_type_hints(options_class)
    infos = []
    for f in dataclasses.fields(options_class):
        spec = f.metadata.get(_SPEC)
        if spec is None:
            raise TypeError(f"{options_class.__name__}.{f.name} is not declared with option(...)")
        kind, optional = _kind(hints[f.name])
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        infos.append(OptionInfo(f.name, kind, optional, default, spec))
    return infos


def _kind(hint: Any) -> tuple[type, bool]:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    base = args[0] if optional and len(args) == 1 else hint
    if typing.get_origin(base) is list:
        return list, optional
    if base not in _SCALARS:
        raise TypeError(f"unsupported option type {hint!r}")
    return base, optional


# -- parsing ----------------------------------------------------------------------------------

def parse_options(options_class: type[Options], values: Mapping[str, Any], *, backend: str,
                  others: Mapping[str, tuple[OptionInfo, list[str]]], cli: bool = False) -> Options:
    """VALUES (field name -> value; None means not given) checked and typed into OPTIONS_CLASS.

    OTHERS (`merged_fields` of every backend) names the backends that take an option this
    one does not, for the error. CLI=True names values by flag, else by key.
    """
    infos = {info.name: info for info in fields_of(options_class)}
    typed: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue
        if name not in infos:
            if name in others:
                info, owners = others[name]
                label = info.flag if cli else f"option {name!r}"
                raise BadInput(f"{label} is not an option of --target {backend}; it is for "
                               f"--target {' / '.join(owners)}")
            raise BadInput(f"unknown option {name!r} for --target {backend}")
        info = infos[name]
        typed[name] = _check(info, value, info.flag if cli else f"option {name!r}")
    return options_class(**typed)


def _check(info: OptionInfo, value: Any, label: str) -> Any:
    spec = info.spec
    kind_word = {bool: "true or false", int: "an integer", float: "a number", str: "text", Path: "a path",
                 list: "a list of text"}[info.kind]
    if info.kind is list:
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            raise BadInput(f"{label} takes {kind_word}, got {value!r}")
        value = list(value)
    elif info.kind is bool:
        if not isinstance(value, bool):
            raise BadInput(f"{label} takes {kind_word}, got {value!r}")
    elif info.kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadInput(f"{label} takes {kind_word}, got {value!r}")
    elif info.kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadInput(f"{label} takes {kind_word}, got {value!r}")
        value = float(value)
    elif info.kind is Path:
        if not isinstance(value, (str, Path)) or not str(value):
            raise BadInput(f"{label} takes {kind_word}, got {value!r}")
        value = Path(value)
        if spec.must_exist and not value.exists():
            raise BadInput(f"{label} {value} does not exist")
    elif not isinstance(value, str):
        raise BadInput(f"{label} takes {kind_word}, got {value!r}")
    if spec.choices and value not in spec.choices:
        raise BadInput(f"{label} takes {spec.rule or ' or '.join(spec.choices)}, got {value!r}")
    low_ok = spec.minimum is None or value >= spec.minimum
    high_ok = spec.maximum is None or value <= spec.maximum
    above_ok = spec.exclusive_minimum is None or value > spec.exclusive_minimum
    below_ok = spec.exclusive_maximum is None or value < spec.exclusive_maximum
    if not (low_ok and high_ok and above_ok and below_ok):
        rule = spec.rule or _range_words(spec)
        raise BadInput(f"{label} takes {rule}, got {value!r}")
    return value


def _range_words(spec: Spec) -> str:
    if spec.minimum is not None and spec.maximum is not None:
        return f"{spec.minimum:g}-{spec.maximum:g}"
    if spec.exclusive_minimum is not None and spec.exclusive_maximum is not None:
        return f"a value in ({spec.exclusive_minimum:g}, {spec.exclusive_maximum:g})"
    if spec.exclusive_minimum is not None:
        return f"a value > {spec.exclusive_minimum:g}"
    return f"a value >= {spec.minimum:g}" if spec.minimum is not None else f"a value <= {spec.maximum:g}"


def as_dict(options: Options) -> dict[str, Any]:
    """JSON-safe values of an Options instance (paths as text), e.g. for the manifest."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(options).items()}


# -- what the CLI and the recipe schema are generated from ------------------------------------

def merged_fields(options_classes: Mapping[str, type[Options]]) -> dict[str, tuple[OptionInfo, list[str]]]:
    """Every option name -> (its field, the backends that take it), in declaration order.

    A name shared by several backends must be declared identically (same type, default and
    spec), so one flag and one schema entry can serve all of them.
    """
    merged: dict[str, tuple[OptionInfo, list[str]]] = {}
    for backend, cls in options_classes.items():
        for info in fields_of(cls):
            if info.name in merged:
                first, owners = merged[info.name]
                if first != info:
                    raise TypeError(f"option {info.name!r} differs between {owners[0]} and {backend}: "
                                    "declare it once (e.g. a shared option(...)) and reuse it")
                owners.append(backend)
            else:
                merged[info.name] = (info, [backend])
    return merged


def json_schema(options_classes: Mapping[str, type[Options]]) -> dict[str, dict[str, Any]]:
    """JSON Schema `properties` for the union of all backends' options (which backend takes
    which is checked by `parse_options`, with a message naming them)."""
    schema = {}
    for name, (info, owners) in merged_fields(options_classes).items():
        prop = info.schema()
        prop["description"] = f"{info.spec.help} [{', '.join(owners)}]"
        schema[name] = prop
    return schema


# -- options several backends take (declared once, so their flag is one flag) ----------------

def threads_option() -> Any:
    return option(None, "Inference threads, recorded in the manifest and applied at load.", minimum=1,
                  rule="a positive number of threads")


def ignored_scope_option() -> Any:
    return option([], "Keep float: node name, PyTorch module, re:<regex> or type:<OpType> (repeatable).")


def plan_option() -> Any:
    return option("accurate", "INT8 Q/DQ placement profile: accurate | fast.", choices=("accurate", "fast"))


def quantize_attention_option() -> Any:
    return option(False, "INT8: also quantize attention's activation x activation MatMuls (q@kT, attn@v).")


def smoothquant_alpha_option() -> Any:
    return option(None, "INT8: SmoothQuant migration strength alpha in (0, 1); higher moves more of the activation "
                  "outliers' range into the per-channel weights (default: the backend's own choice).",
                  exclusive_minimum=0, exclusive_maximum=1, rule="a SmoothQuant alpha in (0, 1), e.g. 0.75")
