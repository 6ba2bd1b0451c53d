"""Table 3: speed ratios (`bench_speed.py`) and `synfer generate` vs bare pipeline calls."""

from __future__ import annotations

import functools
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

    measured = [stage for name in config.speed_configs for stage in speed_config_stages(name, work)]
    speed = {"rows": [row for stage in measured for row in stage["rows"]], "native_bf16": bench_speed.native_bf16(),
             **combined_stage(measured)}
    writer = cached(
        work / "generate_writer.json",
        lambda: bench_generate_writer.main(
            ["--memory-samples", str(config.writer_memory_samples), "--accelerator-speedup", str(SIMULATED_SPEEDUP),
             *WRITER_SIZES]
        ),
    )
    return {"speed": speed, "writer": writer}


def speed_config_stages(name: str, work: Path) -> list[dict]:
    """The `bench_speed.py` rows of config `name` (its `default_rows`), each cached on its own so that a kill keeps the
    rows measured (an `sd15` row takes up to half an hour on 2 CPU cores); the components are built once, for the first
    row not cached."""
    import bench_speed

    bench = bench_speed.CONFIGS[name]
    built = functools.cache(lambda: bench_speed.build_components(bench))

    def measure(row: str) -> dict:
        rows = bench_speed.measure(bench, (row,), built())
        print(*map(bench_speed.format_row, rows), sep="\n", flush=True)
        return {"rows": rows}

    rows = bench_speed.default_rows(bench)
    return [cached(work / "speed" / f"{name}_{row}.json", lambda row=row: measure(row)) for row in rows]


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
