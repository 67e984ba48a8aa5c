"""YAML loading that remembers where each value came from, so a bad file is rejected with the line at fault.

Every OCC data file (config, metric catalog, devices, rules, scenarios) goes through `load_yaml`. The result
is plain Python data plus a `Lines` map from key path to 1-based line number.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from occ.errors import ConfigError

KeyPath = tuple[str | int, ...]


@dataclass(slots=True)
class Lines:
    """Line numbers of every mapping key and sequence item, by key path."""

    path: str
    by_key: dict[KeyPath, int] = field(default_factory=dict)

    def of(self, *keys: str | int) -> int | None:
        """Line of the deepest known prefix of `keys` (a missing key reports its parent's line)."""
        probe: KeyPath = tuple(keys)
        while probe:
            if probe in self.by_key:
                return self.by_key[probe]
            probe = probe[:-1]
        return self.by_key.get((), None)

    def error(self, reason: str, *keys: str | int) -> ConfigError:
        return ConfigError(reason, path=self.path, line=self.of(*keys))


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (a silent overwrite hides mistakes in station data)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _walk(node: yaml.Node, prefix: KeyPath, out: dict[KeyPath, int]) -> None:
    out.setdefault(prefix, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[(*prefix, key)] = key_node.start_mark.line + 1
            _walk(value_node, (*prefix, key), out)
            out[(*prefix, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*prefix, index), out)


def parse_yaml(text: str, path: str = "<string>") -> tuple[Any, Lines]:
    """Parse YAML text; raise ConfigError with the line of a syntax error or duplicate key."""
    lines = Lines(path)
    try:
        node = yaml.compose(text, Loader=_UniqueKeyLoader)
        if node is None:
            return None, lines
        _walk(node, (), lines.by_key)
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"invalid YAML: {exc.problem or exc}", path=path, line=line) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", path=path) from exc
    return data, lines


def load_yaml(path: str | Path) -> tuple[Any, Lines]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror}", path=str(p)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"file is not UTF-8: {exc}", path=str(p)) from exc
    return parse_yaml(text, str(p))


def require_keys(data: dict[str, Any], allowed: Iterable[str], lines: Lines, *prefix: str | int) -> None:
    """Reject unknown keys: a typo in a config key must not silently fall back to a default."""
    allowed_set = set(allowed)
    for key in data:
        if key not in allowed_set:
            options = ", ".join(sorted(allowed_set))
            raise lines.error(f"unknown key {key!r} (expected one of: {options})", *prefix, key)
