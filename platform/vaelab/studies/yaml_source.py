"""Reading YAML with the line of every key: `read_yaml`, `Source` and key paths.

A `Source` names the file (and key-path prefix) values come from, so every SpecError
points at file, key path and line. Imports only yaml and vaelab.errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import yaml

from vaelab.errors import SpecError

# ---------------------------------------------------------------------------------
# Where an error points: file, key-path prefix and YAML line numbers


@dataclass(frozen=True)
class Source:
    """A YAML file (or the inline part of one) that values come from.

    `prefix` is prepended to key paths, e.g. "search_space." for a search space
    written inline in a study, so messages point at the right spot of the right file.
    """

    file: str
    prefix: str = ""
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def path(self, key_path: str) -> str:
        if not key_path:
            return self.prefix.rstrip(".") or ""
        return f"{self.prefix}{key_path}"

    def error(self, key_path: str, value: Any, message: str) -> SpecError:
        full = self.path(key_path)
        return SpecError(self.file, full, value, message, self.line(full))

    def line(self, full_path: str) -> Optional[int]:
        """Line of the key, or of its nearest enclosing key that has one."""
        path = full_path
        while path:
            if path in self.lines:
                return self.lines[path]
            path = re.sub(r"(\[\d+\]|\.[^.\[\]]+|^[^.\[\]]+)$", "", path)
        return None


def key_join(path: str, key: Union[str, int]) -> str:
    """'axes.depth' + 'grid' -> 'axes.depth.grid'; + 2 -> 'axes.depth.grid[2]'."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def display_path(path: Path) -> str:
    """A path as the user would type it: relative to the working directory if inside."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------
# Reading YAML


def read_yaml(path: Path, shown: Optional[str] = None) -> tuple[Any, Source]:
    """Parse one YAML file with safe loading; syntax errors carry their line."""
    shown = shown or display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(shown, "(file)", str(path), "file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(shown, "(file)", str(path), f"cannot read: {err}") from None
    return parse_yaml(text, shown)


def parse_yaml(text: str, shown: str) -> tuple[Any, Source]:
    """`yaml.safe_load`, plus a composed node tree for line numbers and duplicate keys."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        raise _yaml_syntax_error(err, text, shown) from None
    except yaml.YAMLError as err:
        raise SpecError(shown, "(file)", None, f"YAML error: {err}") from None
    lines: dict[str, int] = {}
    duplicates: list[SpecError] = []
    if node is not None:
        _walk_nodes(node, "", lines, duplicates, shown, depth=0)
    if duplicates:
        raise duplicates[0]
    return data, Source(shown, "", lines)


def _yaml_syntax_error(err: yaml.MarkedYAMLError, text: str, shown: str) -> SpecError:
    mark = err.problem_mark or err.context_mark
    if mark is None:
        return SpecError(shown, "(file)", None, f"YAML syntax error: {err}")
    line = mark.line + 1
    source_lines = text.splitlines()
    snippet = source_lines[mark.line].strip() if mark.line < len(source_lines) else ""
    problem = err.problem or err.context or "invalid YAML"
    message = f"YAML syntax error at line {line}, column {mark.column + 1}: {problem}"
    return SpecError(shown, f"line {line}", snippet, message, line)


def _walk_nodes(
    node: yaml.Node, path: str, lines: dict[str, int], dups: list[SpecError], shown: str, depth: int
) -> None:
    """Record the line of every key path; report a key written twice in one mapping
    (safe_load would silently keep the last one)."""
    if depth > 50:  # aliases can build cycles; specs are never this deep
        return
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key_path = key_join(path, key_node.value)
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                dups.append(SpecError(shown, key_path, key_node.value, "key appears twice in one mapping", line))
            seen.add(key_node.value)
            lines.setdefault(key_path, line)
            _walk_nodes(value_node, key_path, lines, dups, shown, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            item_path = key_join(path, index)
            lines.setdefault(item_path, item.start_mark.line + 1)
            _walk_nodes(item, item_path, lines, dups, shown, depth + 1)
