"""Per-epoch metrics as JSON lines: appended, flushed and fsynced as each epoch ends.

A run killed mid-write leaves a torn last line; readers detect and ignore it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from ..atomic import write_bytes_atomically

__all__ = ["append_record", "read_records", "write_records", "write_csv"]

def append_record(path: Path, record: dict) -> None:
    """Append one record as a line and make it durable before returning."""
    line = json.dumps(record, sort_keys=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_records(path: Path) -> list[dict]:
    """All complete records of a metrics file; a torn (unterminated or unparsable) last line is ignored.

    Raises:
        ValueError: a line other than the last is not valid JSON (the file is corrupt, not torn).
    """
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    lines.pop()  # after the last newline: empty, or a line torn by a kill during the write
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}: line {number} is not valid JSON; the metrics file is corrupt") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {number} is not a JSON object; the metrics file is corrupt")
        records.append(record)
    return records


def write_records(path: Path, records: list[dict]) -> None:
    """Replace a metrics file atomically with ``records`` (used when resuming from a checkpoint)."""
    write_bytes_atomically(path, "".join(json.dumps(record) + "\n" for record in records).encode("utf-8"))


def write_csv(path: Path, records: list[dict]) -> None:
    """Replace ``path`` atomically with ``records`` as CSV: a header of every key (in order of first
    appearance), one row per record; numbers written as ``json`` writes them, so the two files read back equal."""
    keys = list(dict.fromkeys(key for record in records for key in record))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(keys)
    for record in records:
        writer.writerow([json.dumps(record[k]) if k in record and not isinstance(record[k], str) else record.get(k, "")
                         for k in keys])
    write_bytes_atomically(path, text.getvalue().encode("utf-8"))
