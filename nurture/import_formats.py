"""Contact files read as they stream in: CSV (a header row first) or JSON lines.

Bytes arrive in chunks of any size; ``feed`` answers the rows completed so far and ``close``
the last one. Nothing is held beyond the row being read, and that row is bounded: a line
longer than ``max_row_bytes`` is dropped as it arrives and reported as a bad row.

Each row comes out as the body POST /contacts would take for it (``values``), or with the
reason it cannot be read. Known fields map to contact fields; any other column (CSV) or key
(JSON) becomes a property. CSV headers are matched as lowercase words joined by underscores.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from nurture.json_depth import nests_deeper_than

Format = Literal["csv", "jsonl"]

BOM = b"\xef\xbb\xbf"
# Set fields in a CSV cell: "newsletter; webinar" (a comma would need quoting in every file).
SET_FIELDS = frozenset({"lists", "tags"})
SET_SEPARATOR = ";"


@dataclass
class RawRow:
    number: int  # the data row, from 1 (a CSV header is not a row)
    line: int  # the file line it starts on, from 1
    values: dict[str, Any] | None = None
    problem: str | None = None
    field: str | None = None


class FileRefused(Exception):
    """The file as a whole cannot be imported (a CSV header without an email column ...)."""


@dataclass(frozen=True)
class RowLimits:
    max_row_bytes: int
    max_columns: int
    max_depth: int


class _Overlong:
    """Stands for a line longer than the limit, whose bytes were dropped."""


OVERLONG = _Overlong()


class LineSplitter:
    """Bytes in, lines out (without their ``\\n``, the file's BOM dropped); a line past
    ``max_bytes`` comes out as OVERLONG, its bytes dropped as they arrive."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._pieces: list[bytes] = []  # the line begun, kept in pieces: a body of tiny chunks costs no copying
        self._size = 0
        self._dropping = False
        self._first = True

    def feed(self, chunk: bytes) -> list[bytes | _Overlong]:
        if b"\n" not in chunk:
            self._hold(chunk)
            return []
        first, *middle, tail = chunk.split(b"\n")
        lines = [self._finish(first), *(line if len(line) <= self.max_bytes else OVERLONG for line in middle)]
        self._hold(tail)
        return self._without_bom(lines)

    def close(self) -> list[bytes | _Overlong]:
        return self._without_bom([self._finish(b"")]) if self._pieces or self._dropping else []

    def _hold(self, piece: bytes) -> None:
        if self._dropping or not piece:
            return
        self._size += len(piece)
        if self._size > self.max_bytes:
            self._pieces, self._size, self._dropping = [], 0, True
        else:
            self._pieces.append(piece)

    def _finish(self, end: bytes) -> bytes | _Overlong:
        """The line held so far, ended by ``end``."""
        overlong = self._dropping or self._size + len(end) > self.max_bytes
        line = OVERLONG if overlong else b"".join([*self._pieces, end])
        self._pieces, self._size, self._dropping = [], 0, False
        return line

    def _without_bom(self, lines: list[bytes | _Overlong]) -> list[bytes | _Overlong]:
        if self._first and lines:
            self._first = False
            if isinstance(lines[0], bytes):
                lines[0] = lines[0].removeprefix(BOM)
        return lines


def _header_name(name: str) -> str:
    """``Lifecycle Stage`` and ``lifecycle-stage`` name the field ``lifecycle_stage``; a column
    ``Company Size`` the property ``company_size`` (the names flows use, not the labels exports show)."""
    return re.sub(r"[\s-]+", "_", name.strip().lower())


class _CsvRecords:
    """Joins the lines of one CSV record: a quoted field may hold line breaks.

    Follows the csv module's reading of quotes: a quote opens a quoted field only as the
    field's first character; inside, ``""`` is a quote and a lone ``"`` closes it.
    """

    _SPECIAL = re.compile(rb'[",]')

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._quoted = False

    @property
    def open(self) -> bool:
        return bool(self._parts)

    def add(self, line: bytes) -> bytes | None:
        """The whole record once ``line`` completes it, else None."""
        if not self._parts and b'"' not in line:
            return line
        self._parts.append(line)
        self._quoted = self._still_quoted(line, self._quoted)
        if self._quoted:
            return None
        return self.take()

    def size(self) -> int:
        return sum(len(part) + 1 for part in self._parts)

    def take(self) -> bytes:
        record, self._parts, self._quoted = b"\n".join(self._parts), [], False
        return record

    @classmethod
    def _still_quoted(cls, line: bytes, quoted: bool) -> bool:
        i, field_start, n = 0, 0, len(line)
        while True:
            if quoted:
                j = line.find(b'"', i)
                if j < 0:
                    return True
                if j + 1 < n and line[j + 1] == 0x22:  # "" inside quotes
                    i = j + 2
                    continue
                quoted, i = False, j + 1
                continue
            found = cls._SPECIAL.search(line, i)
            if found is None:
                return False
            j = found.start()
            if line[j] == 0x2C:  # a comma starts the next field
                i = field_start = j + 1
            else:
                quoted = j == field_start
                i = j + 1


class CsvReader:
    """A CSV file: the header names the columns, one of them ``email``."""

    def __init__(self, limits: RowLimits, known_fields: Iterable[str]):
        self.limits = limits
        self.known = frozenset(known_fields) - {"properties"}
        self.lines = LineSplitter(limits.max_row_bytes)
        self.records = _CsvRecords()
        self.columns: list[tuple[str, str] | None] | None = None  # per column: ("field" | "property", name)
        self.line = 0  # lines read
        self.record_line = 1  # where the record being read starts
        self.rows = 0

    def feed(self, chunk: bytes) -> list[RawRow]:
        return self._read(self.lines.feed(chunk))

    def close(self) -> list[RawRow]:
        rows = self._read(self.lines.close())
        if self.records.open:
            self.records.take()
            rows.append(self._bad("a quoted field is never closed"))
        if self.columns is None:
            raise FileRefused("the file is empty: a CSV starts with a header row naming its columns, one of them email")
        return rows

    def _read(self, lines: list[bytes | _Overlong]) -> list[RawRow]:
        rows: list[RawRow] = []
        for line in lines:
            self.line += 1
            if not self.records.open:
                self.record_line = self.line
            if isinstance(line, _Overlong) or self.records.size() + len(line) > self.limits.max_row_bytes:
                # Reading starts again at the next line: what follows a dropped line cannot be placed.
                self.records.take()
                rows.append(self._bad(f"the row is longer than {self.limits.max_row_bytes} bytes (the import_max_row_bytes limit)"))
                continue
            record = self.records.add(line)
            if record is not None:
                row = self._record(record)
                if row is not None:
                    rows.append(row)
        return rows

    def _bad(self, problem: str) -> RawRow:
        if self.columns is None:
            raise FileRefused(f"the header row cannot be read: {problem}")
        self.rows += 1
        return RawRow(self.rows, self.record_line, problem=problem)

    def _record(self, record: bytes) -> RawRow | None:
        try:
            text = record.decode("utf-8")
        except UnicodeDecodeError:
            return self._bad("the row is not UTF-8 text")
        if "\x00" in text:
            return self._bad("the row holds a NUL character")
        try:
            cells = next(csv.reader([text]), [])
        except csv.Error as exc:
            return self._bad(f"the row is not valid CSV: {exc}")
        if self.columns is None:
            self._take_header(cells)
            return None
        cells = [cell.strip() for cell in cells]
        if not any(cells):
            return None  # a blank line, or only separators: not a row
        self.rows += 1
        if len(cells) > len(self.columns):
            return RawRow(self.rows, self.record_line, problem=f"the row has {len(cells)} values, the header {len(self.columns)} columns")
        values: dict[str, Any] = {}
        properties: dict[str, Any] = {}
        for cell, column in zip(cells, self.columns):
            if not cell or column is None:
                continue  # an empty cell is "not given": it changes nothing
            kind, name = column
            if kind == "property":
                properties[name] = cell
            elif name in SET_FIELDS:
                values[name] = [part.strip() for part in cell.split(SET_SEPARATOR) if part.strip()]
            else:
                values[name] = cell
        if properties:
            values["properties"] = properties
        return RawRow(self.rows, self.record_line, values=values)

    def _take_header(self, cells: list[str]) -> None:
        if len(cells) > self.limits.max_columns:
            raise FileRefused(f"the header has {len(cells)} columns, more than {self.limits.max_columns} (the import_max_columns limit)")
        columns: list[tuple[str, str] | None] = []
        seen: dict[tuple[str, str], str] = {}
        for cell in cells:
            name = cell.strip()
            if not name:
                columns.append(None)  # a column without a name is left out
                continue
            key = _header_name(name)
            column = ("field" if key in self.known else "property", key)
            if column in seen:
                raise FileRefused(f"the columns '{seen[column]}' and '{name}' name the same thing")
            seen[column] = name
            columns.append(column)
        if ("field", "email") not in seen:
            shown = ", ".join(cell.strip() for cell in cells[:20]) or "(nothing)"
            raise FileRefused(f"the CSV has no email column: its header is {shown}")
        self.columns = columns


class JsonLinesReader:
    """One JSON object per line, shaped like a POST /contacts body; other keys are properties."""

    def __init__(self, limits: RowLimits, known_fields: Iterable[str]):
        self.limits = limits
        self.known = frozenset(known_fields)
        self.lines = LineSplitter(limits.max_row_bytes)
        self.line = 0
        self.rows = 0

    def feed(self, chunk: bytes) -> list[RawRow]:
        return self._read(self.lines.feed(chunk))

    def close(self) -> list[RawRow]:
        return self._read(self.lines.close())

    def _read(self, lines: list[bytes | _Overlong]) -> list[RawRow]:
        rows = []
        for line in lines:
            self.line += 1
            if isinstance(line, _Overlong):
                rows.append(self._row(problem=f"the line is longer than {self.limits.max_row_bytes} bytes (the import_max_row_bytes limit)"))
            elif line.strip():
                rows.append(self._parse(line))
        return rows

    def _row(self, **fields: Any) -> RawRow:
        self.rows += 1
        return RawRow(self.rows, self.line, **fields)

    def _parse(self, line: bytes) -> RawRow:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return self._row(problem="the line is not UTF-8 text")
        if nests_deeper_than(line, self.limits.max_depth):
            return self._row(problem=f"the line nests deeper than {self.limits.max_depth} levels (the max_nesting_depth limit)")
        try:
            data = json.loads(text, parse_float=_finite, parse_constant=_no_constant)
        except ValueError as exc:  # JSONDecodeError, and numbers too long to convert
            return self._row(problem=f"the line is not JSON: {exc}")
        if not isinstance(data, dict):
            return self._row(problem="each line is one JSON object")
        if _holds_unstorable_text(text, data):
            return self._row(problem="the line holds a NUL character or an unpaired surrogate")
        properties = data.get("properties")
        extra = {key: value for key, value in data.items() if key not in self.known}
        if len(data) + (len(properties) if isinstance(properties, dict) else 0) > self.limits.max_columns:
            return self._row(problem=f"the line has more than {self.limits.max_columns} keys (the import_max_columns limit)")
        if extra:
            if properties is not None and not isinstance(properties, dict):
                return self._row(problem="properties must be an object", field="properties")
            both = sorted(set(extra) & set(properties or {}))
            if both:
                return self._row(problem=f"'{both[0]}' is given both as a key and in properties", field=f"properties.{both[0]}")
            data = {key: value for key, value in data.items() if key in self.known}
            data["properties"] = {**(properties or {}), **extra}
        return self._row(values=data)


def _finite(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise ValueError(f"the number {text[:20]} is too large")
    return number


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON, and PostgreSQL's json type refuses them.
    raise ValueError(f"{name} is not a JSON value")


def _holds_unstorable_text(text: str, data: Any) -> bool:
    # PostgreSQL text refuses NUL, and UTF-8 cannot carry a lone surrogate; in a JSON line both
    # only come through \u escapes (json.loads refuses raw control characters), so most lines skip the walk.
    return "\\u" in text and _unstorable(data)


def _unstorable(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value or _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_unstorable(key) or _unstorable(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_unstorable(item) for item in value)
    return False


_SURROGATE = re.compile("[\ud800-\udfff]")


def reader(kind: Format, limits: RowLimits, known_fields: Iterable[str]) -> CsvReader | JsonLinesReader:
    return CsvReader(limits, known_fields) if kind == "csv" else JsonLinesReader(limits, known_fields)
