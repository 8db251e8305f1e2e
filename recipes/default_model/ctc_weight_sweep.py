"""Joint decoding's CTC weight, per compressor, chosen on a development set and not on the test sets.

    python recipes/default_model/ctc_weight_sweep.py --data data3dev/test,data3dev/unheard \
        --weights 0.3,0.5,0.7 --out recipes/default_model/results/ctc-weight/dev

Exports the shipped model once per compressor (q8_0, each with its adapter and its realigned CTC
head, as `edgelalm export` makes it), then transcribes the first --clips clips of each set at each
weight (a beam of 4, the model's advice) through the runtime. Writes OUT/sweep.json (every answer)
and OUT/sweep.md: WER per compressor and weight, each set and the sets' words pooled.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from wer_table import COMPRESSORS, held_out_clips, write_summary

from edgelalm.constants import CTC_READS, DEFAULT_CTC_READS
from edgelalm.export.bundle import ExportOptions, export_bundle
from edgelalm.export.checkpoint import auto_encoder_precision
from edgelalm.pretrained import default_adapter_dir, default_model_dir
from edgelalm.training.evaluate import score, transcribe_bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="comma-separated make_encoded_data.py sets (audio kept)")
    parser.add_argument("--clips", type=int, default=200, help="first N clips of each set")
    parser.add_argument("--weights", default="0.3,0.5,0.7", help="comma-separated CTC weights")
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--compressors", default="none,avg2,avg3,sample3,unseg", help="comma-separated labels")
    parser.add_argument("--quant", default="q8_0")
    parser.add_argument("--model", type=Path, default=None, help="a candidate checkpoint (default: the shipped model)")
    parser.add_argument("--ctc-reads", choices=CTC_READS, default=DEFAULT_CTC_READS, help="export --ctc-reads")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    weights = [float(weight) for weight in args.weights.split(",")]
    sets = {name: held_out_clips(Path(name), args.clips) for name in args.data.split(",")}
    seconds = {name: sum(len(clip) for clip in clips) / rate for name, (clips, _, _, rate) in sets.items()}
    model_dir = args.model or default_model_dir()
    precision = auto_encoder_precision(model_dir)
    started = time.perf_counter()
    results: dict[str, dict[str, dict[str, dict]]] = {}
    wanted = args.compressors.split(",")
    for spec in [c for c in COMPRESSORS if c.label in wanted]:
        adapter = None if spec.name == "none" else default_adapter_dir(spec)
        with tempfile.TemporaryDirectory() as scratch:
            bundle = Path(scratch) / spec.label
            options = ExportOptions(
                model_dir, bundle, spec, precision, args.quant, adapter, True, ctc_reads=args.ctc_reads
            )
            export_bundle(options)
            for weight in weights:
                for name, (clips, references, _silent, rate) in sets.items():
                    texts, tokens = transcribe_bundle(bundle, clips, rate, beam_size=args.beam_size, ctc_weight=weight)
                    result = score(references, texts, tokens, seconds[name])
                    results.setdefault(spec.label, {}).setdefault(f"{weight:g}", {})[name] = {
                        "wer": result.wer,
                        "errors": result.errors,
                        "words": result.words,
                        "hypotheses": list(result.hypotheses),
                    }
                    minutes = (time.perf_counter() - started) / 60
                    line = f"{spec.label} weight {weight:g} {name}: {result.wer:.2%}"
                    print(f"[{minutes:5.1f} min] {line}", file=sys.stderr)
    summary = {
        "model": str(model_dir),
        "data": list(sets),
        "clips": {name: len(clips) for name, (clips, *_rest) in sets.items()},
        "quant": args.quant,
        "encoder_precision": precision,
        "beam_size": args.beam_size,
        "results": results,
    }
    write_summary(args.out, "sweep", summary, markdown_table(summary))
    return 0


def markdown_table(summary: dict) -> str:
    names = summary["data"]
    lines = [
        "| compressor | CTC weight | " + " | ".join(names) + " | pooled |",
        "|---" * (len(names) + 3) + "|",
    ]
    for label, by_weight in summary["results"].items():
        for weight, by_set in by_weight.items():
            errors = sum(entry["errors"] for entry in by_set.values())
            words = sum(entry["words"] for entry in by_set.values())
            cells = [f"{100 * by_set[name]['wer']:.1f}" for name in names]
            lines.append(f"| {label} | {weight} | " + " | ".join(cells) + f" | {100 * errors / words:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
