"""Reading a recipe file: YAML with the bounds a hostile or broken file needs.

PyYAML's SafeLoader runs no code, but it keeps the last of two duplicate keys silently,
recurses without bound, converts integers of any length and expands aliases without limit;
each of those is refused here in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from slimkit.errors import ConfigError
from slimkit.messages import clip, one_line, quote

# A recipe is a few kilobytes; these bounds stop a hostile or broken file (an alias bomb, a
# file nested thousands deep, a huge integer) long before it costs memory or a traceback.
MAX_RECIPE_BYTES = 4 << 20
MAX_DEPTH = 50
MAX_NODES = 200_000
MAX_INT_CHARS = 100


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML keeps the last one silently), deep
    nesting (the composer recurses) and integers longer than Python converts."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep",
                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # merged keys may be overridden; that is what merging is for
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                    seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:
                    continue  # an unhashable key: SafeLoader reports it
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {quote(key, 60)} (first at line {first})",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Any) -> Any:
        if len(str(node.value)) > MAX_INT_CHARS:
            raise yaml.constructor.ConstructorError(
                None, None, f"integer of {len(str(node.value))} characters is too long",
                node.start_mark)
        return super().construct_yaml_int(node)


_RecipeLoader.add_constructor("tag:yaml.org,2002:int", _RecipeLoader.construct_yaml_int)


def read_recipe_file(path: Path, name: str) -> Any:
    """The YAML document in `path`, or one ConfigError line saying why it cannot be read."""
    try:
        if not path.is_file():
            raise ConfigError(f"{name}: no such recipe file")
        with path.open("rb") as f:
            data = f.read(MAX_RECIPE_BYTES + 1)
    except (OSError, ValueError) as e:  # unreadable, a symlink loop, a name too long
        raise ConfigError(f"{name}: cannot read the recipe ({clip(e, 120)})") from None
    if len(data) > MAX_RECIPE_BYTES:
        raise ConfigError(f"{name}: larger than {MAX_RECIPE_BYTES >> 20} MiB, too large for a "
                          f"recipe")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{name}: not UTF-8 text (byte {e.start})") from None
    return _read_yaml(text, name)


def _read_yaml(text: str, name: str) -> Any:
    loader = _RecipeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _count_nodes(node, {}, set(), name)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        what = ", ".join(str(x) for x in (getattr(e, "context", None),
                                          getattr(e, "problem", None)) if x) or str(e)
        raise ConfigError(one_line(f"{name}: not valid YAML ({where}: {clip(what, 200)})")) \
            from None
    except (RecursionError, ValueError) as e:  # a bound above missed; still one line
        raise ConfigError(f"{name}: not a readable recipe ({clip(e, 120)})") from None
    finally:
        loader.dispose()


def _count_nodes(node: Any, sizes: dict[int, int], open_: set[int], name: str) -> int:
    """Nodes of the document with every alias expanded, counted once per distinct node: an
    alias bomb is a few lines that expand to billions, and validation would walk them all."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise ConfigError(f"{name}: not valid YAML (line {node.start_mark.line + 1}: an alias "
                          f"refers to a node that contains it)")
    open_.add(key)
    children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                else node.value if isinstance(node, yaml.SequenceNode) else [])
    total = 1 + sum(_count_nodes(c, sizes, open_, name) for c in children)
    open_.discard(key)
    if total > MAX_NODES:
        raise ConfigError(f"{name}: more than {MAX_NODES} values once aliases are expanded; "
                          f"too large for a recipe")
    sizes[key] = total
    return total
