"""Table 6: FERAnno vs a stock classifier trained on the same labelled faces (`eval_feranno_vs_classifier.py`)."""

from __future__ import annotations

from pathlib import Path

from .common import CLASSIFIER, SuiteConfig, cached

FERANNO_LEARNING_RATE = "3e-4"  # the embedded default's FERAnno recipe (examples/train_faceworld_default.sh)


def table_feranno(config: SuiteConfig, run_dir: Path, work: Path) -> dict:
    """FERAnno (a new head on the embedded default's frozen UNet) and the suite's downstream ResNet, both trained on
    the first `feranno_num_train` annotated (noisy) train faces for `feranno_steps` steps of `feranno_batch_size`
    images, plus the ResNet at the suite's own classifier budget; scored on the real test faces."""
    import eval_feranno_vs_classifier  # the benchmark script beside the suite (on sys.path)

    suite_budget = (
        config.classifier_steps * CLASSIFIER["train_batch_size"] // config.feranno_batch_size
    )  # table 2 images seen
    argv = [
        "--faceworld", str(run_dir / "faceworld"), "--output_dir", str(work / "feranno_vs_classifier"),
        "--num_train", str(config.feranno_num_train), "--num_test", str(config.num_test),
        "--steps", str(config.feranno_steps), "--batch_size", str(config.feranno_batch_size),
        "--longer_classifier_steps", str(suite_budget),
        "--feranno_args", "--learning_rate", FERANNO_LEARNING_RATE,
    ]  # fmt: skip
    return cached(
        work / "feranno_vs_classifier.json",
        lambda: eval_feranno_vs_classifier.main(argv),
    )


def render_feranno(feranno: dict, config: SuiteConfig) -> list[str]:
    """Table 6's section of RESULTS.md."""
    return [
        "## 6. FERAnno vs a stock classifier (same labelled faces)",
        "",
        f"`benchmarks/eval_feranno_vs_classifier.py`: both models learn from the first {config.feranno_num_train} "
        "FaceWorld train faces with their annotated labels (10% noise) and are scored on the real test faces "
        "against their true and annotated labels. FERAnno: a new head on the embedded default's frozen UNet "
        f"(`examples/train_feranno.py`, t = 1, empty prompt, learning rate {FERANNO_LEARNING_RATE} as for the default's "
        "head); ResNet: the downstream recipe of table 2. The first two "
        f"rows see the same images ({config.feranno_steps} steps x {config.feranno_batch_size}); the last gives the "
        "ResNet table 2's budget. Train seconds are wall time on this machine: a FERAnno step runs the frozen VAE "
        "and UNet forward.",
        "",
        "| model | images seen | accuracy (true labels) | accuracy (annotated labels) | macro-F1 | train s |",
        "|---|---|---|---|---|---|",
        *[f"| {r['name']} | {r['images_seen']} | {r['accuracy_clean']:.1%} | {r['accuracy_noisy']:.1%} | "
          f"{r['macro_f1']:.3f} | {r['seconds']:.0f} |" for r in feranno["rows"]],
        "",
    ]  # fmt: skip


def feranno_targets(feranno: dict) -> list[tuple[str, str, bool]]:
    """FERAnno (true-label accuracy) matches or beats the stock classifier at the same images seen, and at table 2's
    budget."""
    stock_same, model, stock_longer = (row["accuracy_clean"] for row in feranno["rows"])
    return [
        ("FERAnno >= stock classifier, same labelled faces and images seen", f"{model:.1%} vs {stock_same:.1%}",
         model >= stock_same),
        ("FERAnno >= stock classifier at table 2's budget", f"{model:.1%} vs {stock_longer:.1%}",
         model >= stock_longer),
    ]  # fmt: skip
