"""The stock half of diffusers' harness (`test_pipeline_conformance.py::TestStableDiffusionPeer`) runs only when what
it depends on changed: the versions of diffusers, transformers and torch, the vendored harness, the conformance test
module and the tiny parts it builds the stock pipeline from. Its last passing run is recorded in
`stock_peer_record.json` beside this file; while the record matches, `make test` deselects the peer (it tests
diffusers on fixed inputs, not this package) and `test_the_stock_peer_passed_on_these_versions_and_parts` checks
the record. When anything changed, the peer runs in every `make test` and that test fails until

    python tests/stock_peer.py      # runs the peer alone; records it if every test passed

`SYNFER_STOCK_PEER=1` runs the peer whatever the record says (the GPU run's accelerator-only harness tests do).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

TESTS = Path(__file__).resolve().parent
RECORD = TESTS / "stock_peer_record.json"
SOURCES = (
    *sorted((TESTS / "diffusers_harness").glob("*.py")),
    TESTS / "test_pipeline_conformance.py",
    TESTS.parent / "src" / "synfer_diffusers" / "tiny.py",
)
PEER = "tests/test_pipeline_conformance.py::TestStableDiffusionPeer"
FORCE = "SYNFER_STOCK_PEER"


def fingerprint() -> dict[str, str]:
    """The library versions and one SHA-256 over `SOURCES` (their paths relative to the repository and bytes)."""
    digest = hashlib.sha256()
    for path in SOURCES:
        digest.update(path.relative_to(TESTS.parent).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return {**{name: version(name) for name in ("diffusers", "transformers", "torch")}, "sources": digest.hexdigest()}


def recorded() -> dict | None:
    return json.loads(RECORD.read_text()) if RECORD.exists() else None


def peer_may_be_skipped() -> bool:
    """Whether this session may deselect the peer: its last passing run is recorded for the current fingerprint and
    `SYNFER_STOCK_PEER` does not ask for it."""
    return os.environ.get(FORCE) != "1" and recorded() == fingerprint()


def main() -> int:
    """Runs the peer alone (offline); on success writes the record."""
    env = {**os.environ, FORCE: "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", PEER]
    returncode = subprocess.run(command, cwd=TESTS.parent, env=env).returncode
    if returncode == 0:
        RECORD.write_text(json.dumps(fingerprint(), indent=2) + "\n")
        print(f"recorded {RECORD.relative_to(TESTS.parent)}")
    return returncode


if __name__ == "__main__":
    sys.exit(main())
