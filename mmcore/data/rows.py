"""The rows of a CSV or JSONL manifest, each with its line number; structural faults reported.

A row is never lost or merged in silence. In a CSV, a row with more or fewer fields than
the header (often an unquoted comma in a text) is a ``field_count`` problem, and a quoted
field that swallows following lines which are rows of their own (an unclosed quote) is
``merged_rows``. A text longer than the ``csv`` module's default field limit is read
whole (the collator cuts it). Bytes that are not UTF-8 are read as lone surrogates
(``surrogateescape``), so one bad byte costs one cell, not the file.
"""
from __future__ import annotations

import csv
import difflib
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

REQUIRED_COLUMNS = ("image", "text", "label")
KNOWN_COLUMNS = (*REQUIRED_COLUMNS, "split", "id")  # other columns are ignored
FIELD_LIMIT = 1 << 30  # characters of one CSV field; the csv default (131072) is a text's size
# (kind, line, column, message) -> the action taken; reports one problem
Flag = Callable[[str, "int | None", "str | None", str], str]
Row = tuple[int, dict[str, Any]]  # (first line of the row, column -> value)


def read_rows(path: Path, flag: Flag) -> list[Row]:
    """Every row of a ``.csv`` or ``.jsonl`` manifest that parses, with the line it starts on.

    Args:
        path: the manifest.
        flag: ``(kind, line, column, message)`` called for every structural problem.

    Returns:
        (line, row) pairs in file order; rows with a structural problem are left out.
    """
    if path.suffix.lower() == ".csv":
        return _csv_rows(path, flag)
    return list(_jsonl_rows(path, flag))


def _csv_rows(path: Path, flag: Flag) -> list[Row]:
    previous_limit = csv.field_size_limit(FIELD_LIMIT)
    try:
        with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            return _parse_csv(path, f, flag)
    finally:
        csv.field_size_limit(previous_limit)


def _parse_csv(path: Path, f: Any, flag: Flag) -> list[Row]:
    consumed: list[str] = []  # the physical lines of the record being read

    def lines() -> Iterator[str]:
        for line in f:
            consumed.append(line)
            yield line

    reader = csv.reader(lines())
    header = [h.strip() for h in next(reader, [])]
    if not _header_ok(path, header, flag):
        return []
    records = []  # (first line, fields, physical lines)
    line = reader.line_num + 1
    consumed.clear()
    while True:
        try:
            record = next(reader, None)
        except csv.Error as err:
            flag("bad_row", line, None, f"{path}: line {line} cannot be parsed as CSV ({err}); "
                                        "the rest of the file is not read")
            break
        if record is None:
            break
        if record:  # not a blank line
            records.append((line, record, list(consumed)))
        consumed.clear()
        line = reader.line_num + 1
    labels = {r[header.index("label")].strip() for _, r, lines_ in records
              if len(lines_) == 1 and len(r) == len(header)}
    rows = []
    for first, record, physical in records:
        swallowed = _swallowed_row(physical, header, labels)
        if swallowed:
            flag("merged_rows", first, None, f"{path}: line {first} opens a quote that is not "
                 f"closed on its line, so line {first + swallowed} (a row of its own) and the "
                 "lines between were read into one field; close the quote (a quote inside a "
                 'text is written "")')
        elif len(record) != len(header):
            flag("field_count", first, None, _field_count_message(path, first, record, header))
        else:
            rows.append((first, dict(zip(header, record))))
    return rows


def _swallowed_row(physical: list[str], header: list[str], labels: set[str]) -> int:
    """Offset of the first line inside a multi-line record that is a row of its own: its
    quotes balanced on the line (the line that closes a real multi-line text has an odd
    number), the header's field count and a label other rows use; 0 if none."""
    for offset, text in enumerate(physical[1:], 1):
        if text.count('"') % 2:
            continue
        inner = next(csv.reader([text]), [])
        if len(inner) == len(header) and inner[header.index("label")].strip() in labels:
            return offset
    return 0


def _header_ok(path: Path, header: list[str], flag: Flag) -> bool:
    twice = sorted({h for h in header if h and header.count(h) > 1})
    for column in twice:
        flag("bad_row", 1, column, f"{path}: line 1, column '{column}' appears twice in the "
                                   "header")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    for column in missing:
        flag("missing_column", 1, column,
             f"{path}: missing column '{column}' in the header {header}; required: "
             f"{', '.join(REQUIRED_COLUMNS)}{_did_you_mean(column, header)}")
    return not (missing or twice)


def _field_count_message(path: Path, line: int, record: list[str], header: list[str]) -> str:
    where = f"{path}: line {line} has {len(record)} fields but the header has {len(header)}"
    if len(record) > len(header):
        extra = ", ".join(repr(v[:40]) for v in record[len(header):])
        return (f"{where}; extra: {extra} (an unquoted comma in a text? write the text in "
                "double quotes)")
    return f"{where}; missing: {', '.join(header[len(record):])}"


def _jsonl_rows(path: Path, flag: Flag) -> Iterator[Row]:
    with path.open(encoding="utf-8-sig", errors="surrogateescape") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                flag("bad_row", line_no, None, f"{path}: line {line_no}, column {err.colno} is "
                                               f"not valid JSON ({err.msg})")
                continue
            if not isinstance(row, dict):
                flag("bad_row", line_no, None, f"{path}: line {line_no} must be a JSON object")
                continue
            missing = [c for c in REQUIRED_COLUMNS if c not in row]
            for column in missing:
                flag("missing_column", line_no, column,
                     f"{path}: line {line_no} has no column '{column}'; required: "
                     f"{', '.join(REQUIRED_COLUMNS)}{_did_you_mean(column, list(row))}")
            bad = next((c for c in KNOWN_COLUMNS if not _plain(row.get(c), c == "label")), None)
            if bad is not None:
                flag("bad_row", line_no, bad, f"{path}: line {line_no}, column '{bad}': "
                     f"{type(row[bad]).__name__} {str(row[bad])[:40]!r} is not a string"
                     f"{' or a list of strings' if bad == 'label' else ''}")
            elif not missing:
                yield line_no, row


def _plain(value: Any, may_be_list: bool) -> bool:
    """A JSON value a manifest cell may hold: text, a number, null (a label: also a list)."""
    if isinstance(value, list) and may_be_list:
        return all(_plain(v, False) and v is not None for v in value)
    return value is None or isinstance(value, (str, int, float)) and not isinstance(value, bool)


def _did_you_mean(column: str, names: Sequence[Any]) -> str:
    close = difflib.get_close_matches(column, [str(n) for n in names if n not in
                                               REQUIRED_COLUMNS], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


__all__ = ["Flag", "REQUIRED_COLUMNS", "Row", "read_rows"]
