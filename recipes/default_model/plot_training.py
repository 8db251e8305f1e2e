"""One loss curve over the base model's training stages (recipes/default_model/run_all.sh).

    python recipes/default_model/plot_training.py build/default-model/base-stage1:1500 \\
        build/default-model/base-stage2:2000 build/default-model/base --out recipes/default_model/results

Each argument is a stage's output folder, with ":N" where the stage was stopped (its log may run a
little past the snapshot it handed on). Copies the logs, truncated, to OUT/train_log_stageK.jsonl
and draws OUT/loss.png: training loss (answer and CTC) and held-out answer loss against the
total step, with the stage boundaries marked.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stages", nargs="+")
    parser.add_argument("--out", type=Path, default=Path("recipes/default_model/results"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(8, 4.5))
    offset, series = 0, {"answer_loss": [], "ctc_loss": [], "test_loss": []}
    for number, stage in enumerate(args.stages, start=1):
        folder, _, stop = stage.partition(":")
        records = [
            json.loads(line) for line in (Path(folder) / "train_log.jsonl").read_text().splitlines() if line.strip()
        ]
        if stop:
            records = [r for r in records if r["step"] <= int(stop)]
        (args.out / f"train_log_stage{number}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        for r in records:
            for key in series:
                if key in r and not (key == "ctc_loss" and r["step"] == 1):
                    series[key].append((offset + r["step"], r[key]))
        offset += records[-1]["step"]
        if number < len(args.stages):
            axis.axvline(offset, color="grey", linestyle=":", linewidth=1)
    labels = {
        "answer_loss": "train: answer cross entropy (mean of 50 steps)",
        "ctc_loss": "train: CTC, training-only head (mean of 50 steps)",
        "test_loss": "held-out: answer cross entropy",
    }
    for key, points in series.items():
        if key != "test_loss":
            points = running_mean(points, 50)
        if points:
            axis.plot(
                *zip(*points, strict=True),
                "o-" if key == "test_loss" else "-",
                label=labels[key],
                markersize=3,
                alpha=0.9 if key == "test_loss" else 0.6,
            )
    # A fresh CTC head starts near 200 nats for a few steps; the held-out curve sets the scale.
    axis.set_ylim(0, 1.3 * max(loss for _, loss in series["test_loss"]) if series["test_loss"] else None)
    axis.set_xlabel("step (batch 16); dotted lines: stage boundaries")
    axis.set_ylabel("loss (nats)")
    axis.set_title("default model, base training on 2 CPU cores")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(args.out / "loss.png", dpi=110)
    print(args.out / "loss.png", file=sys.stderr)
    return 0


def running_mean(points: list[tuple[int, float]], width: int) -> list[tuple[int, float]]:
    """Each point's value averaged with the width - 1 before it (per-batch losses are noisy)."""
    values = [value for _, value in points]
    return [
        (step, sum(values[max(0, i - width + 1) : i + 1]) / (i + 1 - max(0, i - width + 1)))
        for i, (step, _) in enumerate(points)
    ]


if __name__ == "__main__":
    sys.exit(main())
