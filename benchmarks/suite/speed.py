"""Table 3: speed ratios (`bench_speed.py`) and `synfer generate` vs bare pipeline calls."""

from __future__ import annotations

from pathlib import Path

from .common import SuiteConfig, cached, combined_stage

SIMULATED_SPEEDUP = 10
"""The accelerator's assumed speedup over this CPU in the writer's simulated row (`--accelerator-speedup`)."""
SIMULATED_ROW = f"simulated_accelerator_x{SIMULATED_SPEEDUP}"
WRITER_SIZES = ("--num-samples", "256", "--shard-size", "64")
"""Images per timed run and per shard: enough that a run's fixed costs (checks, plan, card: a few tenths of a second)
do not dominate the simulated row, whose pipeline calls take about 17 ms per image."""


def table_speed(config: SuiteConfig, work: Path) -> dict:
    import bench_generate_writer  # the benchmark scripts beside the suite (on sys.path)
    import bench_speed

    configs = [  # one cache per config: a kill keeps the configs already measured (sd15's take most of the time)
        cached(work / f"speed_{name}.json", lambda name=name: {"rows": bench_speed.main(["--configs", name])})
        for name in config.speed_configs
    ]
    speed = {"rows": [row for measured in configs for row in measured["rows"]], **combined_stage(configs)}
    writer = cached(
        work / "generate_writer.json",
        lambda: bench_generate_writer.main(
            ["--memory-samples", str(config.writer_memory_samples), "--accelerator-speedup", str(SIMULATED_SPEEDUP),
             *WRITER_SIZES]
        ),
    )
    return {"speed": speed, "writer": writer}


def writer_rows(speed: dict) -> dict[str, dict]:
    """The writer's throughput rows of table 3 by label: this CPU, and the simulated accelerator where measured."""
    writer = speed["writer"]
    rows = {"this CPU": writer["throughput"]}
    if SIMULATED_ROW in writer:
        rows[f"simulated accelerator ({SIMULATED_SPEEDUP}x this CPU)"] = writer[SIMULATED_ROW]
    return rows


def speed_row_unit(row: dict) -> str:
    """`s` or `MB`; rows recorded before `bench_speed.py` named units (`baseline_s`, `candidate_s`) are times."""
    return row.get("unit", "s")


def speed_row_value(row: dict, side: str) -> float:
    return row[side] if side in row else row[f"{side}_s"]
