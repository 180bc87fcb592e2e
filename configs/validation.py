"""Building a config from untrusted input: one-line errors naming the key, the value and the fix.

:func:`validate` turns pydantic's errors into one :class:`~fedgenome.configs.errors.ConfigError`
line; :func:`read_toml` does the same for a TOML file's I/O and syntax errors; :func:`field_choices`
lists a ``Literal`` field's values for the CLI's choice lists.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, ValidationError

from fedgenome.configs.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

_M = TypeVar("_M", bound=BaseModel)


def _describe(err: Any) -> str:
    """Turn one pydantic error into 'key: problem (got value)'."""
    key = ".".join(str(p) for p in err["loc"]) or "<top level>"
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}': remove it or check its spelling"
    if err["type"] == "missing":
        return f"missing key '{key}': add it"
    if isinstance(value, bool) and err["type"] in ("int_type", "float_type"):
        return f"key '{key}' = {value!r}: a boolean is not a number; write a number"
    if isinstance(value, str) and err["type"] in ("int_type", "float_type"):
        return f"key '{key}' = {value!r}: a string is not a number; write it without quotes"
    if err["type"] == "finite_number":
        return f"key '{key}' = {value!r}: must be a finite number"
    return f"key '{key}' = {value!r}: {err['msg'].removeprefix('Value error, ')}"


def validate(model: type[_M], data: dict[str, Any], *, source: str) -> _M:
    """Build ``model`` from ``data``; raise :class:`ConfigError` naming ``source``, key and fix."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = _describe(exc.errors()[0])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{source}: {first}{more}") from None


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file, turning I/O and syntax errors into one-line errors."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found; check the path") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror}); check permissions") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax") from None


def field_choices(model: type[BaseModel], field: str) -> tuple[str, ...]:
    """The values a ``Literal`` field of ``model`` allows, in order (for the CLI's choice lists).

    >>> from fedgenome.configs.schema import FederationConfig
    >>> field_choices(FederationConfig, "aggregation")
    ('plain', 'secagg+')

    Raises:
        TypeError: The field is not a ``Literal`` of strings.
    """
    annotation = model.model_fields[field].annotation
    values = get_args(annotation) if get_origin(annotation) is Literal else ()
    if not values or not all(isinstance(v, str) for v in values):
        raise TypeError(f"{model.__name__}.{field} is not a Literal of strings")
    return tuple(str(v) for v in values)
