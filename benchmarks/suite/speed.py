"""Table 3: speed ratios (`bench_speed.py`) and `synfer generate` vs bare pipeline calls."""

from __future__ import annotations

from pathlib import Path

from .common import BENCHMARKS, SuiteConfig, cached, load_script


def table_speed(config: SuiteConfig, work: Path) -> dict:
    speed = cached(
        work / "speed.json",
        lambda: {"rows": load_script(BENCHMARKS / "bench_speed.py").main(["--configs", *config.speed_configs])},
    )
    writer = cached(
        work / "generate_writer.json",
        lambda: load_script(BENCHMARKS / "bench_generate_writer.py").main(
            ["--memory-samples", str(config.writer_memory_samples)]
        ),
    )
    return {"speed": speed, "writer": writer}


def speed_row_unit(row: dict) -> str:
    """`s` or `MB`; rows recorded before `bench_speed.py` named units (`baseline_s`, `candidate_s`) are times."""
    return row.get("unit", "s")


def speed_row_value(row: dict, side: str) -> float:
    return row[side] if side in row else row[f"{side}_s"]
