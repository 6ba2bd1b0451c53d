"""The prepared GPU run (`benchmarks/gpu/run_gpu.py`) rehearsed on the CPU: its `--dry-run` runs every section at the
tiny sizes and writes the JSON and the Markdown table the GPU run writes."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "run_gpu.py"


@pytest.mark.slow
def test_dry_run_writes_every_section(tmp_path):
    spec = importlib.util.spec_from_file_location("run_gpu", SCRIPT)
    run_gpu = importlib.util.module_from_spec(spec)
    sys.modules["run_gpu"] = run_gpu  # dataclasses look their module up while the file executes
    spec.loader.exec_module(run_gpu)

    results = run_gpu.main(["--dry-run", "--out", str(tmp_path)])

    written = json.loads((tmp_path / "gpu_results.json").read_text())
    assert written["speed"] == results["speed"] and written["sections"] == results["sections"]
    assert all(state.startswith("done") for state in results["sections"].values()), results["sections"]
    plan = run_gpu.DRY_RUN_PLAN
    measured = {(row["row"], row["dtype"], row["batch"]) for row in results["speed"]}
    rows = (*run_gpu.SPEED_ROWS, "stock_sd_images_per_s", "synfer_images_per_s")
    assert measured == {(r, d, b) for r in rows for d in plan.dtypes for b in plan.batches}
    assert all(row.get("ratio", row.get("value")) > 0 for row in results["speed"])
    (harness,) = results["harness"]
    assert "test_float16_inference" in harness["tests"] and len(harness["tests"]) == 11  # as diffusers counts them
    assert harness["counts"].get("skipped") == 2 * len(harness["tests"])  # SynFER and its stock peer, on a CPU
    table = (tmp_path / "gpu_results.md").read_text()
    assert "| au_overhead | float32 | 1 |" in table and "harness tests" in table
