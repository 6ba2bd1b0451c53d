"""The suite's targets, plots and RESULTS.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from synfer_diffusers import EXPRESSIONS

from .common import DEFAULT_LABELS, DEFAULT_TEMPERING, NOT_RECORDED, SuiteConfig
from .editing import render_editing
from .feranno import render_feranno
from .hard_regime import render_hard_regime
from .representation import render_representation
from .speed import speed_row_unit, speed_row_value, writer_rows


def generation_targets(generation: dict) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for table 1: the AU error ratio and the semantic-guidance gain."""
    gen = {row["name"]: row for row in generation["rows"]}
    (real_faces,) = [row for row in generation["rows"] if row["name"].startswith("real")]
    return [
        ("AU error of + AUs images <= 1.2x the regressor's error on real faces",
         f"{gen['+ AUs']['au_mae']:.3f} / {real_faces['au_mae']:.3f} = {gen['+ AUs']['au_mae'] / real_faces['au_mae']:.2f}x",
         gen["+ AUs"]["au_mae"] <= 1.2 * real_faces["au_mae"]),
        ("SG adds >= 5 points of expression accuracy",
         f"{gen['+ AUs']['expression_accuracy']:.1%} -> {gen['+ AUs + SG']['expression_accuracy']:.1%}",
         gen["+ AUs + SG"]["expression_accuracy"] - gen["+ AUs"]["expression_accuracy"] >= 0.05),
    ] + au_control_targets(generation.get("au_control"))  # fmt: skip


def au_control_targets(control: dict | None) -> list[tuple[str, str, bool]]:
    """Issue 27's sweep target: every AU's requested-vs-estimated Spearman >= 0.9 (none where not measured)."""
    if control is None:
        return []
    summary = control["sweeps"]["summary"]
    return [("every AU's sweep Spearman >= 0.9",
             f"min {summary['min_spearman']:.2f} ({summary['min_spearman_au']}), mean {summary['mean_spearman']:.2f}",
             summary["min_spearman"] >= 0.9)]  # fmt: skip


def downstream_targets(downstream: dict, config: SuiteConfig) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for table 2: synthetic vs real, and voted vs target labels."""
    acc = {row["name"]: row["accuracy_mean"] for row in downstream["rows"]}
    k = config.synthetic_factor
    real = acc["real N"]
    checks = [
        ("synthetic N (vote) >= real N", f"{acc['synthetic N (vote)']:.1%} vs {real:.1%}",
         acc["synthetic N (vote)"] >= real),
        (f"synthetic {k}N (vote) > real N", f"{acc[f'synthetic {k}N (vote)']:.1%} vs {real:.1%}",
         acc[f"synthetic {k}N (vote)"] > real),
        ("real N + synthetic N (vote) >= real N + 2 points", f"{acc['real N + synthetic N (vote)']:.1%} vs {real:.1%}",
         acc["real N + synthetic N (vote)"] >= real + 0.02),
    ]  # fmt: skip
    vote, target = acc["synthetic N, no SG (vote)"], acc["synthetic N, no SG (target)"]
    checks.append(
        ("synthetic N, no SG: voted labels beat target labels", f"{vote:.1%} vs {target:.1%}", vote > target)
    )
    default = acc[f"synthetic N, no SG ({DEFAULT_LABELS})"]
    checks.append(("synthetic N, no SG: default labels >= target labels", f"{default:.1%} vs {target:.1%}",
                   default >= target))  # fmt: skip
    for regime, by_judge in downstream.get("label_agreement_with_judges", {}).items():
        for judge, rates in by_judge.items():
            ours, theirs = rates[DEFAULT_LABELS], rates["target"]
            checks.append((f"{regime} set: default labels agree with the {judge.replace('_', ' ')} >= target labels",
                           f"{ours:.1%} vs {theirs:.1%}", ours >= theirs))  # fmt: skip
    return checks


SPEED_LIMITS = {"au_overhead": 1.05, "semantic_guidance": 1.5, "feranno_in_loop": 1.10}
"""Upper bounds of table 3's ratios; the AU branch's is tighter at the sizes issue 30 names."""
AU_OVERHEAD_LIMITS = {"faceworld": 1.03, "sd15": 1.02}


def _speed_limit(row: str, config: str) -> float | None:
    if row == "au_overhead":
        return AU_OVERHEAD_LIMITS.get(config, SPEED_LIMITS[row])
    return SPEED_LIMITS.get(row)


def speed_targets(speed: dict) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for table 3: the overhead ratios and the writer's throughput."""
    checks = [
        (f"{row['row']} ({row['config']}) <= {limit}", f"{row['ratio']:.3f}", row["ratio"] <= limit)
        for row in speed["speed"]["rows"] if (limit := _speed_limit(row["row"], row["config"])) is not None
    ]  # fmt: skip
    for label, row in writer_rows(speed).items():
        name = "synfer generate / bare pipeline" + ("" if label == "this CPU" else f", {label}")
        checks.append((f"{name} >= 0.95", f"{row['ratio']:.3f}", row["ratio"] >= 0.95))
    return checks


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_generation(generation: dict, plots: Path) -> list[str]:
    plt = _pyplot()
    rows = [r for r in generation["rows"] if not r["name"].startswith("real")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key, title in zip(axes, ("expression_accuracy", "au_mae", "frechet_distance"),
                              ("expression accuracy (judge)", "AU MAE (regressor)", "Fréchet distance (judge features)")):  # fmt: skip
        ax.bar([r["name"] for r in rows], [r[key] for r in rows], color="#4878a8")
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(plots / "generation.png", dpi=110)
    plt.close("all")
    return ["generation.png"]


def plot_downstream(downstream: dict, plots: Path) -> list[str]:
    plt = _pyplot()
    rows = downstream["rows"]
    fig, ax = plt.subplots(figsize=(10, 4))
    colors = ["#777777" if r["labels"] is None else {"target": "#4878a8", "feranno": "#d68a3a", "vote": "#5a9e5a", "dawid_skene": "#8a5aa8", "tempered_dawid_skene": "#c05a8a"}[r["labels"]] for r in rows]  # fmt: skip
    ax.bar(range(len(rows)), [r["accuracy_mean"] for r in rows], yerr=[r["accuracy_std"] for r in rows],
           color=colors, capsize=3)  # fmt: skip
    ax.axhline(rows[0]["accuracy_mean"], color="#777777", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(rows)), [r["name"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy on real test (clean labels)")
    ax.set_ylim(max(0.0, min(r["accuracy_mean"] for r in rows) - 0.1), 1.0)
    fig.tight_layout()
    fig.savefig(plots / "downstream.png", dpi=110)

    fig, axes = plt.subplots(2, (len(rows) + 1) // 2, figsize=(2.8 * ((len(rows) + 1) // 2), 6.4))
    for ax, row in zip(axes.flat, rows):
        confusion = np.asarray(row["confusion_matrix"], dtype=float)
        ax.imshow(confusion / confusion.sum(1, keepdims=True).clip(min=1), vmin=0, vmax=1, cmap="Blues")
        ax.set_title(row["name"], fontsize=7)
        ax.set_xticks(range(len(EXPRESSIONS)), [e[:3] for e in EXPRESSIONS], fontsize=6, rotation=90)
        ax.set_yticks(range(len(EXPRESSIONS)), [e[:3] for e in EXPRESSIONS], fontsize=6)
    for ax in list(axes.flat)[len(rows) :]:
        ax.axis("off")
    fig.suptitle("confusion matrices on real test faces (rows: true, columns: predicted; seeds summed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(plots / "confusion_matrices.png", dpi=110)
    plt.close("all")
    return ["downstream.png", "confusion_matrices.png"]


def plot_speed(speed: dict, plots: Path) -> list[str]:
    plt = _pyplot()
    rows = [row for row in speed["speed"]["rows"] if speed_row_unit(row) == "s"]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(rows) + 1))
    ax.barh([f"{r['config']}: {r['row']}" for r in rows], [r["ratio"] for r in rows], color="#4878a8")
    ax.axvline(1.0, color="#777777", linewidth=1)
    ax.set_xlabel("time ratio (candidate / baseline, same run)")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(plots / "speed.png", dpi=110)
    plt.close("all")
    return ["speed.png"]


def render_header(results: dict, checks, config: SuiteConfig, run_dir: Path) -> list[str]:
    """How the file was produced, the measurement models and the targets of the tables that ran."""
    judge = json.loads((run_dir / "judge" / "metrics.json").read_text())["test"]["original"]
    regressor = json.loads((run_dir / "au_regressor" / "metrics.json").read_text())["test"]
    skipped = [f"{number} ({name})" for number, name in TABLE_NAMES.items() if number not in results["tables"]]
    return [
        "# Benchmark results",
        "",
        f"Produced by `python benchmarks/run_benchmarks.py{' --quick' if config.mode == 'quick' else ''}` "
        f"({config.mode} mode) at code commit {results['commit']}: {render_measured(results['measured'])}; "
        f"rendered {results['date']}. A run may span invocations and machines: the tables recorded in "
        "`results/tables/` at this code commit with these sizes are gathered here. "
        "All quality numbers are measured on **FaceWorld** (the package's procedural benchmark world), not on real "
        "faces; speed rows name their weights. Regenerate this file with the same command.",
        "",
        "Measurement models (committed in `benchmarks/measurement_models/` with the recipe that trained them), "
        "trained on real FaceWorld only and never used in generation: the judge (ResNet "
        f"[32, 64, 128], seed 0) reaches {judge['clean_labels']['accuracy']:.1%} on real test faces (clean labels); "
        f"the AU regressor (ResNet, seed 1) has AU MAE {regressor['original']['mae']:.3f} "
        f"(predicting the train mean: {regressor['baseline_predict_train_mean']['mae']:.3f}). The second judge "
        "(transformers MobileNetV2, width 0.5, depthwise-separable: another model family, trained on the true labels of FaceWorld seed 1, "
        "whose identities and faces the generator never saw) scores tables 1 and 5 beside the judge.",
        "",
        *([f"Not measured at this commit (`--tables` runs them): table {', '.join(skipped)}.", ""] if skipped else []),
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        *[f"| {name} | {value} | {'yes' if met else '**no**'} |" for name, value, met in checks],
        "",
    ]  # fmt: skip


def render_measured(measured: dict) -> str:
    """`tables 1, 6 on DATE (MACHINE); table 5 on ...`: when and where the gathered tables were measured."""
    groups: dict[tuple[str, str], list[str]] = {}
    for number, where in measured.items():
        groups.setdefault((where["date"], where["machine"]), []).append(str(number))
    return "; ".join(
        f"table{'s' if len(numbers) > 1 else ''} {', '.join(numbers)} on {date} ({machine})"
        for (date, machine), numbers in groups.items()
    )


def render_generation(generation: dict, config: SuiteConfig) -> list[str]:
    """Table 1's section of RESULTS.md."""
    return [
        "## 1. Generation (paper Table 1)",
        "",
        f"The embedded default checkpoint, {config.per_expression} images per expression and row (same seeds in "
        f"every row), {config.eval_steps} DDIM steps, CFG 3; semantic guidance lambda_g = "
        f"{config.semantic_guidance_scale:g} (default window 0.6-1.0, a gradient every second step). Text only = "
        "the checkpoint's own base UNet (frozen in stage B, i.e. the stage-A model) with the enriched prompt. "
        "Expression accuracy: the judge's label equals the target. AU MAE: the regressor's estimate vs the AUs "
        "requested. Fréchet distance: judge features of the generated images vs the real test faces.",
        "",
        "| row | images | expression accuracy | by the second judge | AU MAE | Fréchet distance |",
        "|---|---|---|---|---|---|",
        *[f"| {r['name']} | {r['num_images']} | {r['expression_accuracy']:.1%} | "
          f"{_percent(r.get('second_judge_accuracy'))} | {r['au_mae']:.3f} | {r['frechet_distance']:.2f} |"
          for r in generation["rows"]],
        "",
        "Labels agreeing with the judge on the generated images (voted: the paper's rule over FERAnno, the guide on "
        "unguided images and the target; tables 2 and 5 add the RegNet voter and Dawid-Skene): "
        + "; ".join(f"{name}: " + ", ".join(f"{k_} {v:.1%}" for k_, v in rates.items())
                    for name, rates in generation["label_agreement_with_judge"].items()),
        "",
        "![generation](results/generation.png)",
        "",
        *render_au_control(generation.get("au_control")),
        *render_au_levers(generation),
    ]  # fmt: skip


def _fit(entry: dict, side: str) -> str:
    return f"{_number(entry[f'{side}_slope'], '.2f')} / {_number(entry[f'{side}_scatter'], '.2f')}"


def render_au_control(control: dict | None) -> list[str]:
    """Table 1's AU-controllability part: per-AU error (generated vs real) with the AU sweeps, and per-AU intensity
    fits (prototype and real-row requests)."""
    if control is None:
        return []
    sweeps, error, rows = control["sweeps"], control["per_au_error"], control["per_au_error_real_requests"]
    levels = ", ".join(f"{level:g}" for level in sweeps["levels"])
    return [
        "### AU control, per AU",
        "",
        f"Per-AU error: the AU regressor's mean absolute error per AU on the real test faces (true AUs) and on the "
        f"+ AUs images (requested AUs: EMFACS prototypes with jitter), ratio {error['ratio']:.2f}x overall. Sweeps: "
        f"each AU requested at {levels} "
        f"with every other AU at 0 and no expression word, {len(sweeps['seeds'])} seeds per level; Spearman = rank "
        "correlation of the requested and the estimated intensity of that AU; leak = mean absolute change of the "
        "other AUs' estimates from the lowest to the highest level (largest leak: the AU that moves most). No "
        "occurrence-space regressor exists on FaceWorld, so occurrence sweeps are not measured.",
        "",
        "| AU | real MAE | + AUs MAE | ratio | sweep Spearman | estimate at each level | leak | largest leak |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {name} | {e['real']:.3f} | {e['generated']:.3f} | {e['ratio']:.2f}x | "
          f"{sweeps['per_au'][name]['spearman']:.2f} | "
          f"{' / '.join(f'{v:.1f}' for v in sweeps['per_au'][name]['estimate_by_level'])} | "
          f"{sweeps['per_au'][name]['leak']:.2f} | {sweeps['per_au'][name]['largest_leak']} |"
          for name, e in error["per_au"].items()],
        "",
        f"Sweep Spearman: mean {sweeps['summary']['mean_spearman']:.2f}, minimum "
        f"{sweeps['summary']['min_spearman']:.2f} ({sweeps['summary']['min_spearman_au']}); mean leak "
        f"{sweeps['summary']['mean_leak']:.2f}.",
        "",
        "![AU sweeps: one row per AU, requested intensity rising left to right](results/au_sweeps.png)",
        "",
        "Intensity, per AU: slope = the least-squares slope of the estimated on the requested (real faces: true) "
        "intensity over the images where the AU is active (>= 1), 1 following intensity exactly and 0 drawing one "
        "intensity whatever is asked; scatter = the standard deviation of the estimates about that line. Real-row "
        "requests: the same seeds and expressions, each image's AUs a FaceWorld train row with the target label "
        "(`synfer generate`'s `dataset` AU policy: the training world's intensities, 1.5 to 5, and co-activations), "
        f"AU error ratio {rows['ratio']:.2f}x overall.",
        "",
        "| AU | real faces: slope / scatter | + AUs: slope / scatter | real-row requests: ratio | slope / scatter |",
        "|---|---|---|---|---|",
        *[f"| {name} | {_fit(e, 'real')} | {_fit(e, 'generated')} | {rows['per_au'][name]['ratio']:.2f}x | "
          f"{_fit(rows['per_au'][name], 'generated')} |"
          for name, e in error["per_au"].items()],
        "",
    ]  # fmt: skip


def _ratio(error: dict | None) -> str:
    """An AU error ratio, or "-" where it was not measured."""
    return "-" if error is None else f"{error['ratio']:.2f}x"


def _lever_row(setting: str, row: dict, control: dict) -> str:
    summary = control["sweeps"]["summary"]
    return (f"| {setting} | {row['expression_accuracy']:.1%} | {_percent(row.get('second_judge_accuracy'))} | "
            f"{control['per_au_error']['ratio']:.2f}x | {_ratio(control.get('per_au_error_real_requests'))} | "
            f"{summary['mean_spearman']:.2f} / {summary['min_spearman']:.2f} "
            f"({summary['min_spearman_au']}) | {summary['mean_leak']:.2f} | {row['frechet_distance']:.2f} |")  # fmt: skip


def _setting(lever: dict) -> str:
    """A lever row's pipeline arguments, e.g. "au_scale 1.5" or "au_feedback_passes 2"."""
    return ", ".join(f"{key} {value:g}" for key, value in lever.items() if key not in ("generation", "au_control"))


def render_au_levers(generation: dict) -> list[str]:
    """Table 1's lever rows: the default checkpoint sampled with other `au_scale` values or with AU feedback, measured
    as its + AUs row and its AU control (none where not measured)."""
    levers, control = generation.get("au_levers"), generation.get("au_control")
    if not levers or control is None:
        return []
    (default,) = [row for row in generation["rows"] if row["name"] == "+ AUs"]
    return [
        "### AU-control levers (not the default)",
        "",
        "The embedded default sampled with another `au_scale` (the weight of the AU cross-attention branch; 1 is the "
        "default and what stage B trained) or with AU feedback (`au_feedback_passes` P: each pass renders the images, "
        "reads their AUs with the checkpoint's own AU estimator and corrects each image's AU condition by the error "
        "it read; the call takes 1 + P sampling loops), on the same seeds, expressions and requested AUs as the + AUs "
        "row, measured as above: expression accuracy, AU error ratio (prototype and real-row requests), sweeps and "
        "Fréchet distance. The `au_scale` values come from a grid read by the checkpoint's own AU estimator, not by "
        "the AU regressor that measures them here (the grid and the choice: README, AU control).",
        "",
        "| setting | expression accuracy | by the second judge | AU error / real | real-row requests "
        "| sweep Spearman mean / min (AU) | leak | Fréchet distance |",
        "|---|---|---|---|---|---|---|---|",
        _lever_row("default (au_scale 1, no feedback)", default, control),
        *[_lever_row(_setting(lever), lever["generation"], lever["au_control"]) for lever in levers["rows"]],
        "",
    ]  # fmt: skip


def _judge_agreement_table(downstream: dict) -> list[str]:
    """Each label source's agreement with both judges on the whole SG set and the no-SG set (absent from records
    made before it was measured)."""
    agreement = downstream.get("label_agreement_with_judges")
    if agreement is None:
        return []
    sets = list(agreement)
    sources = list(agreement[sets[0]]["judge"])
    return [
        "Labels agreeing with the judges on the whole sets (the images' expression as the measurement models read it; "
        "neither judge steers or votes):",
        "",
        "| labels | " + " | ".join(f"{s}: judge | {s}: second judge" for s in sets) + " |",
        "|---|" + "---|---|" * len(sets),
        *[f"| {source} | " + " | ".join(f"{agreement[s]['judge'][source]:.1%} | {agreement[s]['second_judge'][source]:.1%}"
                                        for s in sets) + " |" for source in sources],
        "",
    ]  # fmt: skip


def render_downstream(downstream: dict, config: SuiteConfig) -> list[str]:
    """Table 2's section of RESULTS.md."""
    k = config.synthetic_factor
    return [
        "## 2. Downstream classifiers (the paper's headline)",
        "",
        f"N = {config.num_real}. Classifier: transformers ResNet [32, 64, 128] from scratch "
        f"(`examples/train_fer_classifier.py` recipe: AdamW 3e-3 one-cycle, label smoothing 0.1, augmentation), "
        f"batch 64, {config.classifier_steps} steps for every row (same compute), seeds {list(config.seeds)}. "
        f"Real = the first N FaceWorld train faces with their annotated labels (10% noise, as annotators give). "
        f"Synthetic = `generate_synthetic_dataset` with the default checkpoint ({config.num_real * k} images, seed 0, "
        f"{config.generation_steps} DDIM steps, CFG 5, lambda_g = {config.semantic_guidance_scale:g}); the N set is "
        "its first N images; `no SG` is the same plan's first N samples (same seeds, expressions and AUs) generated "
        "without semantic guidance. Labels: the generation target, the paper's vote (unanimous labels kept, disputed "
        "ones replaced by the average), Dawid-Skene's (each voter's confusion matrix estimated from the whole set) or "
        f"tempered Dawid-Skene's (the same with every classifier voter's likelihood to the power {DEFAULT_TEMPERING:g}, "
        "the target's not: `synfer generate`'s default), all from the set's stored votes. Its voters are in-loop FERAnno, the "
        "checkpoint's RegNet voter and the target, plus the checkpoint's guide classifier on the no-SG set only (the "
        "guide does not vote on images it steered). "
        "Test: all real FaceWorld test faces against their true labels, with the package's `evaluate` metric. "
        "Mean ± sample standard deviation over seeds.",
        "",
        "| training data | images | accuracy | macro-F1 | " + " | ".join(f"recall {e}" for e in EXPRESSIONS) + " |",
        "|---|---|---|---|" + "---|" * len(EXPRESSIONS),
        *[f"| {r['name']} | {r['num_train']} | {r['accuracy_mean']:.1%} ± {r['accuracy_std']:.1%} | "
          f"{r['macro_f1_mean']:.3f} ± {r['macro_f1_std']:.3f} | "
          + " | ".join(f"{r['per_class_recall'][e]:.2f}" for e in EXPRESSIONS) + " |" for r in downstream["rows"]],
        "",
        "Synthetic labels agreeing with the generation target (the SG set and the no-SG ablation): "
        + ", ".join(f"{s} {v:.1%}" for s, v in downstream["label_agreement_with_target"].items()) + ".",
        "",
        *_judge_agreement_table(downstream),
        "![downstream](results/downstream.png)",
        "",
        "![confusion matrices](results/confusion_matrices.png)",
        "",
    ]  # fmt: skip


def _writer_ratios(speed: dict) -> str:
    def ratios(row: dict) -> str:
        sides = [f"{side} {row[f'{side}_ratio']:.3f}" for side in ("overlap", "synchronous") if f"{side}_ratio" in row]
        return f"{row['ratio']:.3f}" + (f" ({', '.join(sides)})" if sides else "")

    return "; ".join(f"{label} {ratios(row)}" for label, row in writer_rows(speed).items())


def _emulated_bf16_note(speed: dict) -> str:
    """Where this CPU emulates bf16, which configs have no `bf16_vs_fp32` row and why (empty where bf16 is native)."""
    if speed.get("native_bf16", True):
        return ""
    configs = dict.fromkeys(row["config"] for row in speed["rows"])
    measured_at = dict.fromkeys(row["config"] for row in speed["rows"] if row["row"] == "bf16_vs_fp32")
    unmeasured = [config for config in configs if config not in measured_at]
    if not unmeasured:
        return ""
    measured_text = ", ".join(f"`{config}`" for config in measured_at) or "no config"
    return (f" This CPU emulates bf16 (no AVX512-BF16 or AMX): `bf16_vs_fp32` is measured only at {measured_text}, "
            f"not at {', '.join(f'`{config}`' for config in unmeasured)} (one emulated-bf16 `sd15` call ran over 50 "
            "minutes).")


def render_speed(speed: dict, config: SuiteConfig) -> list[str]:
    """Table 3's section of RESULTS.md."""
    return [
        "## 3. Speed (ratios within one run)",
        "",
        "`benchmarks/bench_speed.py`: each row times baseline and candidate alternately after a warm-up and reports "
        "the ratio of medians. `tiny`: the test components (random, fp32, 16 px, batch 4); `sd15`: Stable "
        "Diffusion 1.5 sizes (random weights, bf16 where the CPU computes it natively, else fp32, 512 px, batch 1); "
        "`faceworld`: the embedded default checkpoint "
        f"(trained, fp32, 64 px, batch 35, 25 steps). Device: {speed['speed'].get('device', 'CPU')}."
        f"{_emulated_bf16_note(speed['speed'])}",
        "",
        "| config | row | dtype | unit | baseline | candidate | ratio |",
        "|---|---|---|---|---|---|---|",
        *[f"| {r['config']} | {r['row']} | {r['dtype']} | {speed_row_unit(r)} | {speed_row_value(r, 'baseline'):.3f} | "
          f"{speed_row_value(r, 'candidate'):.3f} | {_number(r['ratio'], '.3f')} |" for r in speed["speed"]["rows"]],
        "",
        "`benchmarks/bench_generate_writer.py` (default checkpoint, 64 px, 4 steps, 256 images in shards of 64): "
        "`synfer generate` / bare "
        "pipeline calls, as it runs by default and with its background stage on and off (median of paired ratios; "
        "the simulated accelerator is a stand-in pipeline that sleeps for the real call's time over the speedup, not "
        f"a GPU measurement): {_writer_ratios(speed)}; resident memory grew "
        f"{speed['writer']['memory']['rss_growth_mb']:.0f} MB over {speed['writer']['memory']['num_samples']} images.",
        "",
        "![speed](results/speed.png)",
        "",
    ]  # fmt: skip


TABLE_NAMES = {1: "generation", 2: "downstream", 3: "speed", 4: "editing", 5: "hard regime", 6: "FERAnno",
               7: "representation"}  # fmt: skip
RESULT_KEYS = {1: "generation", 2: "downstream", 3: "speed", 4: "editing", 5: "hard_regime", 6: "feranno",
               7: "representation"}  # fmt: skip
RENDERERS = {1: render_generation, 2: render_downstream, 3: render_speed, 4: render_editing, 5: render_hard_regime,
             6: render_feranno, 7: render_representation}  # fmt: skip


def render_results(results: dict, checks, config: SuiteConfig, run_dir: Path) -> str:
    """RESULTS.md: the header and targets, the section of each table in `results["tables"]`, and the stages."""
    lines = render_header(results, checks, config, run_dir)
    for number in sorted(results["tables"]):
        lines += RENDERERS[number](results[RESULT_KEYS[number]], config)
    lines += [
        "## Stages",
        "",
        "Each stage's result is cached under the run directory, so a file may combine stages of several resumed "
        "runs; each was measured at the commit named (`-dirty`: with uncommitted changes to tracked files).",
        "",
        *[f"- {name}: {stage['stage_seconds']:.0f} s, commit {stage.get('commit', NOT_RECORDED)}"
          for name, stage in results["stages"].items()],
        "",
    ]  # fmt: skip
    return "\n".join(lines)


def _number(value: float | None, spec: str) -> str:
    """`value` formatted, "-" where it was not measured (None) or is undefined (NaN)."""
    return "-" if value is None or np.isnan(value) else format(value, spec)


def _percent(value: float | None) -> str:
    return _number(value, ".1%")


def print_tables(checks) -> None:
    print("\n== targets")
    for name, value, met in checks:
        print(f"  [{'met' if met else 'MISSED'}] {name}: {value}")
