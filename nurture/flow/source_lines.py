"""Where in a flow's YAML (or JSON) text a problem's path points: its line, for the editor.

Paths are those of flow problems (``steps[2].template``). The text is composed into YAML nodes,
which keep their positions, without building any values, so aliases are not expanded here.
Only call it on text ``parse_flow_text`` accepted: that is where the size and alias limits hold.
"""

from __future__ import annotations

import re

import yaml

_PART = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


def path_parts(path: str) -> list[str | int]:
    """``steps[2].template`` -> ``["steps", 2, "template"]``; the whole flow (``flow``, ``body``) is ``[]``."""
    if path in ("flow", "body"):
        return []
    return [int(index) if index else name for index, name in _PART.findall(path)]


def line_of(text: str, path: str) -> int | None:
    """The 1-based line of the deepest part of ``path`` the text has (a missing field: its parent's)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    if node is None:
        return None
    line = node.start_mark.line
    for part in path_parts(path):
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            found = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part), None)
            if found is None:
                break
            line, node = found[0].start_mark.line, found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line
        else:
            break
    return line + 1


def syntax_error_line(message: str) -> int | None:
    """The line a YAML or JSON syntax error names: its last ``line N`` is where the problem was
    found (the ones before say what was being read)."""
    found = re.findall(r"line (\d+)", message)
    return int(found[-1]) if found else None
