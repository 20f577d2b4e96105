"""One place for every knob: ``key=value`` command lines and YAML files become typed, validated dataclasses.

A declaration file (recipe, filter pipeline, tokenizer spec) is YAML; it may name ``base: OTHER`` to be a small
delta over another file of the same folder. Command-line overrides are merged last. :func:`build` turns the merged
mapping into a dataclass tree, rejecting unknown keys and bad values with a message that names the key and the
valid choices. Dataclasses validate their own invariants in ``__post_init__`` by raising :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")

# Built-in declarations (recipes/, data_filters/, tokenizers/ of the source tree), shipped as package data.
DECLARATIONS_DIR = Path(__file__).resolve().parent / "declarations"


class ConfigError(ValueError):
    """A bad key or value. ``key`` is the dotted path of the offending key ('' when not about one key)."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)

    def under(self, prefix: str) -> ConfigError:
        key = f"{prefix}.{self.key}" if self.key else prefix
        return ConfigError(key, self.message)


class UserError(RuntimeError):
    """A problem the user can fix (missing file, bad data); launch scripts print it as one line."""


def require(condition: bool, key: str, message: str) -> None:
    """Raise ConfigError(key, message) unless condition holds; for ``__post_init__`` checks."""
    if not condition:
        raise ConfigError(key, message)


def check_choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(key, f"invalid value {value!r}; valid choices: {', '.join(map(str, choices))}")


# --------------------------------------------------------------------------------------------------------------
# Mappings: parse, load, merge


class CliText(str):
    """A value as typed on the command line. A str or Path field takes the text itself (``api_key=007`` is "007",
    not 7); every other type parses it: numbers and booleans by :func:`build`, untyped values as YAML."""


def parse_overrides(argv: Sequence[str]) -> dict[str, Any]:
    """``['a.b=1', 'c=x']`` -> ``{'a': {'b': CliText('1')}, 'c': CliText('x')}``; a value written as a YAML list or
    mapping (``[1e-3,3e-3]``, ``{a: 1}``) is parsed as one. The last of a repeated key wins."""
    tree: dict[str, Any] = {}
    pairs = []
    for arg in argv:
        key, sep, text = arg.partition("=")
        if not sep or not key or "" in key.split("."):
            raise ConfigError("", f"argument {arg!r} is not of the form key=value")
        pairs.append((key, text))
    keys = [key for key, _ in pairs]
    for key in keys:
        if any(other.startswith(key + ".") for other in keys):
            raise ConfigError(key, f"given both as a value and with sub-keys ({key}.KEY=...); give one or the other")
    for key, text in pairs:
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _yaml_value(text, key) if text.lstrip()[:1] in ("[", "{") else CliText(text)
    return tree


def _yaml_value(text: str, key: str = "") -> Any:
    try:
        return _plain(OmegaConf.from_dotlist([f"value={text}"]))["value"]
    except OmegaConfBaseException as e:
        raise ConfigError(key, f"cannot parse {text!r}: {e}") from None


def _untyped(value: Any) -> Any:
    """Command-line text where no type says how to read it (a dict[str, Any] or Any field): parsed as YAML."""
    if isinstance(value, CliText):
        return _yaml_value(value)
    if isinstance(value, Mapping):
        return {key: _untyped(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_untyped(item) for item in value]
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    try:
        data = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and friends: report the file, not a traceback
        raise ConfigError("", f"{path}: not valid YAML ({e})") from None
    if data is None or not OmegaConf.is_dict(data):
        raise ConfigError("", f"{path}: expected a mapping of key: value at the top level")
    return _plain(data)


def merge(base: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, everything else in ``delta`` replaces ``base``."""
    out = dict(base)
    for key, value in delta.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def declared_names(folder: str | Path) -> list[str]:
    """Names of the YAML declarations in a folder (recipes/, data_filters/, tokenizers/)."""
    return sorted(p.stem for p in Path(folder).glob("*.yaml") if not p.stem.startswith("_"))


def resolve_declaration(kind: str, name_or_path: str, folder: str | Path) -> Path:
    """A declaration by name (``folder/NAME.yaml``) or by explicit path; errors list the valid names."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    path = Path(folder) / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(kind, f"unknown {kind} {name_or_path!r}; valid choices: {', '.join(declared_names(folder))}")
    return path


def load_declaration(kind: str, name_or_path: str, folder: str | Path) -> dict[str, Any]:
    """Load a YAML declaration, following ``base: NAME`` chains (a delta over another file of the folder)."""
    seen: list[Path] = []
    path = resolve_declaration(kind, name_or_path, folder)
    layers: list[dict[str, Any]] = []
    while True:
        if path in seen:
            raise ConfigError("base", f"cycle of bases: {' -> '.join(p.stem for p in [*seen, path])}")
        seen.append(path)
        data = load_yaml(path)
        base = data.pop("base", None)
        layers.append(data)
        if base is None:
            break
        path = resolve_declaration(kind, str(base), folder)
    merged: dict[str, Any] = {}
    for layer in reversed(layers):
        merged = merge(merged, layer)
    return merged


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


# --------------------------------------------------------------------------------------------------------------
# Typed building


def build(cls: type[T], data: Mapping[str, Any] | None = None, prefix: str = "", usage: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, validating keys, types and choices. A field without a default is
    required; ``usage`` (a command line's synopsis) is shown when one is missing."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(prefix, f"expected a mapping of keys, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ConfigError(path, f"unknown key; valid keys: {', '.join(sorted(fields))}")
        kwargs[key] = _coerce(hints[key], value, path)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}.{name}" if prefix else name, f"required: {usage}" if usage else "required, and not given")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise (e.under(prefix) if prefix else e) from None


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def announce(options: T) -> T:
    """Print a command's resolved options (defaults filled in) as one ``config: {json}`` line on stderr, so that a
    log says what ran while stdout keeps only the command's result; returns ``options``."""
    print(f"config: {json.dumps(dataclasses.asdict(options), default=str)}", file=sys.stderr, flush=True)
    return options


def _is_null(value: Any) -> bool:
    """None, or text meaning no value: none/null, and as typed on the command line also nothing (``out=``) or ~."""
    if not isinstance(value, str):
        return value is None
    return value.strip().lower() in (("", "~", "none", "null") if isinstance(value, CliText) else ("none", "null"))


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return _untyped(value)
    if origin in (typing.Union, types.UnionType):
        if _is_null(value):
            if type(None) in args:
                return None
        candidates = [a for a in args if a is not type(None)]
        if len(candidates) == 1:  # an optional value: its own error, naming the nested key that failed
            return _coerce(candidates[0], value, path)
        errors = []
        for arg in candidates:
            try:
                return _coerce(arg, value, path)
            except ConfigError as e:
                errors.append(e.message)
        raise ConfigError(path, "; ".join(errors))
    if origin is Literal:
        for candidate in (value, _untyped(value)) if isinstance(value, CliText) else (value,):
            if candidate in args:
                return next(a for a in args if a == candidate)  # the declared choice, not the command-line text
        raise ConfigError(path, f"invalid value {str(value)!r}; valid choices: {', '.join(map(str, args))}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return build(tp, value, path)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, str):
            value = [CliText(v.strip()) for v in value.split(",") if v.strip()]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # key=4096 is a list of one
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping, got {value!r}")
        return _untyped(dict(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(path, f"expected true or false, got {value!r}")
    if tp is int:
        number = _number(value, path)
        if not math.isfinite(number) or number != int(number):
            raise ConfigError(path, f"expected an integer, got {str(value)!r}")
        return int(number)
    if tp is float:
        number = float(_number(value, path))
        if math.isnan(number):
            raise ConfigError(path, f"expected a number, got {str(value)!r}")
        return number
    if tp is str:
        if value is None or isinstance(value, (Mapping, list, tuple)):
            raise ConfigError(path, f"expected a string, got {value!r}")
        return str(value)
    if tp is Path:
        if _is_null(value) or (isinstance(value, str) and not value.strip()) or isinstance(value, (Mapping, list)):
            raise ConfigError(path, f"expected a path, got {'nothing' if not value else repr(str(value))}")
        return Path(str(value))
    return value


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(path, f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value.replace("_", "")) if not value.strip().lstrip("-").isdigit() else int(value)
        except ValueError:
            pass
    raise ConfigError(path, f"expected a number, got {value!r}")


# --------------------------------------------------------------------------------------------------------------
# Entry points


def cli_main(fn: Callable[[list[str]], int | None], *options: type | str, doc: str | None = None
             ) -> Callable[[], None]:
    """Wrap a command's ``main(argv)``: ``--help`` prints ``doc`` and the keys of the ``options`` dataclasses
    (generated from their fields; ``"module:Class"`` names one whose module is imported only for the help);
    user errors print as one line and exit 2, not as a traceback."""

    @functools.wraps(fn)
    def wrapper(argv: Sequence[str] | None = None) -> None:
        args = list(sys.argv[1:] if argv is None else argv)
        if any(arg in ("-h", "--help", "help") for arg in args[:1]) or "--help" in args:
            print(format_help(doc or fn.__doc__ or "", *map(_options_class, options)))
            sys.exit(0)
        try:
            code = fn(args)
        except (ConfigError, UserError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except OSError as e:  # a path that cannot be read or written: the path and the reason, as cp would say
            print(f"error: {e.filename}: {e.strerror or e}" if e.filename else f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        sys.exit(code or 0)

    return wrapper


def _options_class(spec: type | str) -> type:
    if isinstance(spec, str):
        import importlib

        module, _, name = spec.partition(":")
        return getattr(importlib.import_module(module), name)
    return spec


# --------------------------------------------------------------------------------------------------------------
# --help, generated from the option dataclasses: each field's type, default and its trailing ``# comment``


def format_help(doc: str, *options: type) -> str:
    """``doc`` (the command's synopsis) followed by one line per key of the option dataclasses."""
    rows = [row for cls in options for row in describe_options(cls)]
    width = max((len(key) for key, *_ in rows), default=0)
    lines = [doc.strip("\n"), ""]
    if rows:
        lines.append("keys (key=value; nested keys as a.b=value):")
        for key, kind, default, text in rows:
            lines.append(f"  {key:<{width}}  {kind}{f' = {default}' if default else ''}{f'  -- {text}' if text else ''}")
    return "\n".join(lines)


def describe_options(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, one-line help) for every init field of a dataclass, nested dataclasses flattened."""
    hints = get_type_hints(cls)
    comments = field_comments(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key, tp = f"{prefix}{f.name}", hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe_options(tp, key + ".")
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default) if isinstance(f.default, str) else str(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = str(f.default_factory())
        else:
            default = "(required)"
        rows.append((key, type_name(tp), default, comments.get(f.name, "")))
    return rows


def type_name(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return "|".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args if a is not type(None)) + (" or none" if type(None) in args else "")
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment on its line of the class body (its one-line help)."""
    import ast
    import inspect
    import io
    import tokenize

    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    by_line = {tok.start[0]: tok.string.lstrip("#").strip()
               for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    body = ast.parse(source).body[0]
    return {node.target.id: by_line[node.lineno] for node in getattr(body, "body", [])
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.lineno in by_line}


def split_args(argv: Sequence[str], positional: int = 0) -> tuple[list[str], dict[str, Any]]:
    """Split ``argv`` into up to ``positional`` leading words (sub-commands) and parsed key=value overrides."""
    words: list[str] = []
    rest = list(argv)
    while rest and len(words) < positional and "=" not in rest[0]:
        words.append(rest.pop(0))
    return words, parse_overrides(rest)
