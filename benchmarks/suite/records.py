"""Table records: each finished table's result, kept beside RESULTS.md as `results/tables/table_N.json` with the code
commit, sizes, date and machine it was measured with.

One suite run may span several invocations (`--tables`), even sessions on fresh machines: RESULTS.md gathers every
table recorded at the current code commit (`git_commit`) with the current sizes, so tables measured apart still come
from one commit. A record of another commit or other sizes, or of a checkout with uncommitted code changes, is never
gathered."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from .common import SuiteConfig, as_read_back, write_json


def record_path(results_dir: Path, number: int) -> Path:
    return results_dir / "tables" / f"table_{number}.json"


def write_record(results_dir: Path, number: int, table: dict, config: SuiteConfig, provenance: dict) -> None:
    """`table`'s record (atomically: a killed write leaves the previous record)."""
    write_json(
        record_path(results_dir, number), {"table": number, **provenance, "config": asdict(config), "result": table}
    )


def gather_records(results_dir: Path, numbers, config: SuiteConfig, commit: str) -> dict[int, dict]:
    """The records of `numbers` measured at code commit `commit` (never a `-dirty` one) with `config`'s sizes."""
    if commit.endswith("-dirty") or commit == "unknown":
        return {}
    records = {}
    for number in numbers:
        path = record_path(results_dir, number)
        record = json.loads(path.read_text()) if path.exists() else None
        if record is not None and record["commit"] == commit and record["config"] == as_read_back(config):
            records[number] = record
    return records
