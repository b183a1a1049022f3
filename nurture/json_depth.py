"""How deep a JSON text nests, measured before it is parsed.

Python's json module and pydantic recurse once per level, so a text nested a few thousand
levels deep raises RecursionError (a 500) instead of a validation problem. The gauge reads
the raw bytes, in as many chunks as they arrive, and only looks at brackets outside strings.
"""

from __future__ import annotations

import re

_STRUCTURE = re.compile(rb'[\[\]{}"]')
_STRING_END = re.compile(rb'["\\]')
_OPENERS = frozenset(b"[{")
_QUOTE = ord('"')
_BACKSLASH = ord("\\")


class JsonDepthGauge:
    """Feed it the text chunk by chunk; ``feed`` answers False once the nesting passes ``max_depth``."""

    def __init__(self, max_depth: int):
        self.max_depth = max_depth
        self.depth = 0
        self._in_string = False
        self._carry = 0  # bytes of the next chunk still escaped by a backslash at the end of this one

    def feed(self, chunk: bytes) -> bool:
        pos = self._carry
        while True:
            if self._in_string:
                found = _STRING_END.search(chunk, pos)
                if found is None:
                    break
                pos = found.end()
                if chunk[found.start()] == _BACKSLASH:
                    pos += 1  # the escaped character, which may be a quote
                else:
                    self._in_string = False
                continue
            found = _STRUCTURE.search(chunk, pos)
            if found is None:
                break
            pos = found.end()
            char = chunk[found.start()]
            if char == _QUOTE:
                self._in_string = True
            elif char in _OPENERS:
                self.depth += 1
                if self.depth > self.max_depth:
                    return False
            elif self.depth > 0:
                self.depth -= 1
        self._carry = max(0, pos - len(chunk))
        return True


def nests_deeper_than(text: bytes | str, max_depth: int) -> bool:
    gauge = JsonDepthGauge(max_depth)
    return not gauge.feed(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
