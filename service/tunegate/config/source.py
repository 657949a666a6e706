"""Read a YAML config file strictly and remember where every key is (SPEC §7).

PyYAML keeps the last of two equal keys without a word; that can move a key into another
tenant's scope. Here the file is composed into nodes first, every mapping is checked for
duplicate keys (naming the YAML path and both lines), and each key's line is kept so
later errors can say `file:line: path: what is wrong`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunegate.errors import ConfigError

Key = str | int
YamlPath = tuple[Key, ...]
# A config is small; more values than this (aliases expanding into each other) is an
# attack or a mistake, refused before anything walks or validates it.
MAX_VALUES = 100_000


@dataclass(frozen=True)
class Lines:
    """The line of each YAML path in one file; `prefix` is where the file's root sits in
    the whole config (`("tasks", "triage")` for a file under `tasks_dir`)."""

    file: Path
    lines: Mapping[YamlPath, int] = field(default_factory=dict)
    prefix: YamlPath = ()

    def line_of(self, path: Sequence[Any]) -> int | None:
        """The line of `path` or of its nearest parent present in the file."""
        parts = tuple(path)
        if parts[: len(self.prefix)] != self.prefix:
            return None
        parts = parts[len(self.prefix) :]
        for end in range(len(parts), 0, -1):
            line = self.lines.get(parts[:end])
            if line is not None:
                return line
        return None

    def at(self, path: Sequence[Any]) -> str:
        """`file:line` (or `file` when the path has no line) for an error message."""
        line = self.line_of(path)
        return f"{self.file}:{line}" if line is not None else str(self.file)


def dotted(path: Sequence[Any]) -> str:
    return ".".join(str(part) for part in path) or "(top level)"


def read_yaml(path: Path) -> tuple[Any, Lines]:
    """The file's data and the line of each key; `ConfigError` for an unreadable file,
    invalid UTF-8, invalid YAML or a duplicate key."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file ({exc.strerror}).") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: not valid UTF-8 (byte {raw[exc.start]:#04x} at offset "
            f"{exc.start}); save the file as UTF-8."
        ) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, Lines(path)
        _check_size(path, node)
        lines: dict[YamlPath, int] = {}
        duplicates = list(_walk(loader, node, (), lines, set()))
        if duplicates:
            raise ConfigError("\n".join(f"{path}:{d}" for d in duplicates))
        data = loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config.") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {exc}") from None
    finally:
        loader.dispose()
    return (data if data is not None else {}), Lines(path, lines)


def _check_size(path: Path, node: yaml.Node) -> None:
    """Refuse a document whose aliases refer to themselves or expand past `MAX_VALUES`."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError(f"{path}: an alias refers to the value that holds it.")
        open_nodes.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        total = 1 + sum(size(child) for child in children)
        open_nodes.discard(key)
        sizes[key] = total
        if total > MAX_VALUES:
            raise ConfigError(
                f"{path}: more than {MAX_VALUES:,} values once aliases are expanded; "
                "a config this large is a mistake."
            )
        return total

    size(node)


def _walk(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    at: YamlPath,
    lines: dict[YamlPath, int],
    walked: set[int],
) -> Iterator[str]:
    """Record the line of every key and item under `node`; yield one message per
    duplicate key. A node reached again through an alias is walked once."""
    if id(node) in walked:
        return
    walked.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = loader.construct_object(key_node)
            line = key_node.start_mark.line + 1
            path = (*at, key)
            if _hashable(key) and key in seen:
                yield (
                    f"{line}: {dotted(path)}: duplicate key {key!r} (first at line "
                    f"{seen[key]}, again at line {line}); keep one."
                )
                continue
            if _hashable(key):
                seen[key] = line
            lines[path] = line
            yield from _walk(loader, value_node, path, lines, walked)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*at, i)] = item.start_mark.line + 1
            yield from _walk(loader, item, (*at, i), lines, walked)


def _hashable(key: object) -> bool:
    try:
        hash(key)
    except TypeError:
        return False
    return True
