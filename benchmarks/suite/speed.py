"""Table 3: speed ratios (`bench_speed.py`) and `synfer generate` vs bare pipeline calls."""

from __future__ import annotations

from pathlib import Path

from .common import SuiteConfig, cached


def table_speed(config: SuiteConfig, work: Path) -> dict:
    import bench_generate_writer  # the benchmark scripts beside the suite (on sys.path)
    import bench_speed

    speed = cached(
        work / "speed.json",
        lambda: {"rows": bench_speed.main(["--configs", *config.speed_configs])},
    )
    writer = cached(
        work / "generate_writer.json",
        lambda: bench_generate_writer.main(
            ["--memory-samples", str(config.writer_memory_samples)]
        ),
    )
    return {"speed": speed, "writer": writer}


def speed_row_unit(row: dict) -> str:
    """`s` or `MB`; rows recorded before `bench_speed.py` named units (`baseline_s`, `candidate_s`) are times."""
    return row.get("unit", "s")


def speed_row_value(row: dict, side: str) -> float:
    return row[side] if side in row else row[f"{side}_s"]
