"""`--help` for the servers: every setting of a pydantic-settings class as the environment variable that sets
it, with its default and its choices, so that a user need not read the code to configure a server."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import SecretStr
from pydantic_settings import BaseSettings


def _choices(annotation: Any) -> list[str]:
    """The values a Literal setting takes (also inside Optional), else []."""
    if typing.get_origin(annotation) is typing.Literal:
        return [str(v) for v in typing.get_args(annotation)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [c for arg in typing.get_args(annotation) for c in _choices(arg)]
    return []


def _shown(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def settings_epilog(settings_cls: type[BaseSettings], prefix: str, note: str = "") -> str:
    """A table of the settings, for an argparse epilog (use RawDescriptionHelpFormatter)."""
    rows = []
    for name, field in settings_cls.model_fields.items():
        default = field.get_default(call_default_factory=True)
        choices = _choices(field.annotation)
        # An unset default that means something (the checkpoint's own value, ...) says so in its description.
        shown = field.description if default is None and field.description else _shown(default)
        rows.append((f"{prefix}{name.upper()}", shown, " | ".join(choices)))
    width = max(len(r[0]) for r in rows) + 2
    lines = ["settings (environment variables, read once when the server starts):"]
    lines += [f"  {var:<{width}}default {default}" + (f"   ({choices})" if choices else "")
              for var, default, choices in rows]
    if note:
        lines += ["", note]
    return "\n".join(lines)
