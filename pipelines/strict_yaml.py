"""YAML as loraops reads it: safe tags only, no key given twice in a mapping, nesting at most MAX_DEPTH deep.

PyYAML keeps the last of two equal keys without a word (a second `data:` section silently replaces the first), and
its composer recurses once per level, so a file nested 50,000 levels deep ends in RecursionError. Here both are one line
(SpecError) naming the file, the line and the fix.
"""

from typing import Any

import yaml
from yaml.error import MarkedYAMLError
from yaml.nodes import MappingNode, Node

from .errors import SpecError

MAX_DEPTH = 64  # a task file needs 3; far below Python's recursion limit at a few frames per level


class Refused(MarkedYAMLError):
    """Valid YAML that loraops refuses: a duplicate key, nesting too deep (load_yaml says it as SpecError)."""


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader (pure Python: its parser keeps a stack, not recursion) refusing duplicate keys and deep
    nesting."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Node | None, index: object) -> Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise Refused(None, None, f"nested deeper than {MAX_DEPTH} levels; a task file needs a few", mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may be overridden: that is its point
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in lines:
                    raise Refused(
                        None,
                        None,
                        f"key {key!r} appears twice (first on line {lines[key]}); keep one",
                        key_node.start_mark,
                    )
            except TypeError:  # an unhashable key: SafeLoader's own error names it
                break
            lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def load_yaml(text: str, source: object) -> Any:
    """The document in `text`, or SpecError naming `source` (the file), the line, and the fix: bad syntax, a key
    given twice in one mapping, nesting deeper than MAX_DEPTH."""
    loader = StrictLoader(text)
    try:
        return loader.get_single_data()
    except MarkedYAMLError as e:
        where = f"{source}:{e.problem_mark.line + 1}" if e.problem_mark else f"{source}"
        if isinstance(e, Refused):
            raise SpecError(f"{where}: {e.problem}") from None
        raise SpecError(f"{where}: not valid YAML ({e.problem or e.context}); fix the syntax") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{source}: not valid YAML ({str(e).splitlines()[0]}); fix the syntax") from None
    finally:
        loader.dispose()
