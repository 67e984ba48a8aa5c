"""Alert messages in Vietnamese and English from the rule's templates.

Vietnamese uses a decimal comma ("vượt báo động II 0,33 m"); templates are ordinary `str.format` strings whose
fields are listed in `alerts.rules.MESSAGE_FIELDS` plus `attr.<device attribute>`.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any


class _Attrs:
    def __init__(self, attrs: Mapping[str, Any]) -> None:
        self._attrs = attrs

    def __getattr__(self, name: str) -> Any:
        value = self._attrs.get(name, "")
        return _Attrs(value) if isinstance(value, Mapping) else value

    def __format__(self, spec: str) -> str:
        return ""


class _Formatter(string.Formatter):
    def __init__(self, comma: bool) -> None:
        self.comma = comma

    def format_field(self, value: Any, format_spec: str) -> str:
        if value is None:
            return "?"
        if isinstance(value, float) and not format_spec:
            format_spec = ".2f" if abs(value) < 100 else ".1f"
        text = format(value, format_spec)
        if self.comma and isinstance(value, float):
            text = text.replace(".", ",")
        return text


_VI = _Formatter(comma=True)
_EN = _Formatter(comma=False)


def render(template: str, context: Mapping[str, Any], *, vietnamese: bool) -> str:
    if not template:
        return ""
    try:
        fields = {**context, "attr": _Attrs(context.get("_attrs", {}))}
        return (_VI if vietnamese else _EN).vformat(template, (), fields)
    except (KeyError, ValueError, IndexError, AttributeError, TypeError) as exc:
        return f"{template} [{type(exc).__name__}]"
