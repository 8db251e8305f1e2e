"""What a CTC head over the encoder's frames costs against one realigned to the compressor over its
tokens (`export --ctc-reads`), or one checkpoint's head against another's (`--models`): seconds to
transcribe a set's first clips through each q8_0 bundle, as the model advises decoding, loads
included, alternating, several runs each.

    python recipes/default_model/ctc_cost.py --data data3dev/test --clips 60 --compressors unseg,avg3 \
        --out recipes/default_model/results/frames-ctc/cost.json
    python recipes/default_model/ctc_cost.py --data data3dev/test --clips 60 --compressors none,unseg \
        --models shipped,build/exp/candidate --ctc-reads frames --out cost.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from wer_table import held_out_clips

from edgelalm.compression import CompressorSpec
from edgelalm.constants import CTC_READS
from edgelalm.export.bundle import ExportOptions, export_bundle
from edgelalm.export.checkpoint import auto_encoder_precision
from edgelalm.pretrained import default_adapter_dir, default_model_dir
from edgelalm.training.evaluate import transcribe_bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a make_encoded_data.py set (audio kept)")
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--compressors", default="unseg,avg3")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="shipped", help="checkpoints, comma-separated (shipped: the package's)")
    parser.add_argument("--ctc-reads", default=",".join(CTC_READS), help="export --ctc-reads values, comma-separated")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    clips, _, _, rate = held_out_clips(args.data, args.clips)
    models = {name: default_model_dir() if name == "shipped" else Path(name) for name in args.models.split(",")}
    seconds: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        bundles = {}
        for model_name, model_dir in models.items():
            for label in args.compressors.split(","):
                spec = CompressorSpec.from_label(label)
                for reads in args.ctc_reads.split(","):
                    name = f"{label} {reads}" if len(models) == 1 else f"{model_name} {label} {reads}"
                    bundle = Path(scratch) / name.replace("/", "_").replace(" ", "-")
                    adapter = None if spec.name == "none" else default_adapter_dir(spec)
                    export_bundle(
                        ExportOptions(
                            model_dir, bundle, spec, auto_encoder_precision(model_dir), "q8_0",
                            adapter, force=True, ctc_reads=reads,
                        )
                    )  # fmt: skip
                    bundles[name] = bundle
        for _ in range(args.repeats):
            for name, bundle in bundles.items():
                started = time.perf_counter()
                transcribe_bundle(bundle, clips, rate, threads=args.threads)
                seconds.setdefault(name, []).append(round(time.perf_counter() - started, 2))
                print(name, seconds[name], flush=True)
    audio_seconds = sum(len(clip) for clip in clips) / rate
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "what": f"seconds to transcribe the first {len(clips)} clips of {args.data} ({audio_seconds:.1f} s of "
                "audio) through q8_0 bundles of the shipped model as it advises decoding, loads included, "
                f"{args.threads} threads, alternating; models {args.models}, export --ctc-reads {args.ctc_reads} "
                "(frames: the head over the encoder's frames; audio-tokens: the head realigned to the compressor "
                "over its tokens)",
                "seconds": seconds,
            },
            indent=1,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
