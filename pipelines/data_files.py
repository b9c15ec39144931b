"""Users' data files as they really are: JSONL, CSV (spreadsheet exports included) or Parquet, local or s3://.

A CSV saved by Excel or LibreOffice starts with a UTF-8 byte order mark, ends its lines with CRLF and, where the
decimal mark is a comma, separates fields with ';'. The mark is dropped (utf-8-sig), the separator is the most
frequent of `,` `;` and tab in the header row, header names lose surrounding spaces, and rows with every cell empty
(a spreadsheet's trailing lines) are skipped. Local files are read as regular files only (input_files.py).
"""

import csv
import io
import json
from pathlib import Path

from registry.errors import RegistryError
from registry.s3 import is_s3_uri, read_object

from .errors import DataError
from .input_files import read_regular

FORMATS = (".jsonl", ".json", ".csv", ".parquet")
CSV_DELIMITERS = (",", ";", "\t")  # in order of preference when the header row has as many of each


def read_rows(path: str, what: str = "data file") -> list[dict]:
    """Rows of a .jsonl / .csv / .parquet file, local or s3:// (standard AWS settings). `what` names the setting
    the path came from (data.path, data.test_path) in errors."""
    suffix = Path(path.split("?")[0]).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: unknown format {suffix!r}; use .jsonl, .csv or .parquet")
    data = _read_bytes(path, what)
    if suffix == ".parquet":
        return _parquet_rows(data, path)
    try:
        text = data.decode("utf-8-sig")  # a byte order mark, as spreadsheets write one, is dropped
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 (byte {e.start}); re-encode the file as UTF-8") from None
    if suffix == ".csv":
        return _csv_rows(text)
    return _jsonl_rows(text, path)


def csv_delimiter(header: str) -> str:
    """The field separator of a CSV, by its header row: the most frequent of `,` `;` and tab; `,` if none."""
    counts = [header.count(d) for d in CSV_DELIMITERS]
    return CSV_DELIMITERS[counts.index(max(counts))]


def _csv_rows(text: str) -> list[dict]:
    # a long text (a whole document in one cell) is data, not an attack: the file is in memory already
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    reader = csv.DictReader(io.StringIO(text), delimiter=csv_delimiter(text.partition("\n")[0]))
    if reader.fieldnames:
        reader.fieldnames = [name.strip() for name in reader.fieldnames]
    return [row for row in reader if any(str(v or "").strip() for v in row.values())]


def _jsonl_rows(text: str, path: str) -> list[dict]:
    rows = []
    for number, row in enumerate(text.splitlines(), 1):
        if row.strip():
            try:
                rows.append(json.loads(row))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: not a JSON object ({e.msg}); one JSON object per line") from None
            except RecursionError:
                raise DataError(f"{path}:{number}: JSON nested too deeply; one flat JSON object per line") from None
    return rows


def _parquet_rows(data: bytes, path: str) -> list[dict]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        return pq.read_table(io.BytesIO(data)).to_pylist()
    except (pyarrow.ArrowException, OSError) as e:
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise DataError(f"{path}: not a readable Parquet file ({reason}); export it again") from None


def _read_bytes(path: str, what: str) -> bytes:
    if is_s3_uri(path):
        try:
            return read_object(path)
        except RegistryError as e:
            raise DataError(f"cannot read {what}: {e}") from None
    return read_regular(path, what, f"point {what} at a .jsonl, .csv or .parquet file")
