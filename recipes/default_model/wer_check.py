"""WER of a checkpoint in PyTorch on the encoded datasets' kept audio (make_encoded_data.py), by
set, synthesizer and kind: the progress check between training stages (the shipped numbers come
from the exported bundles, wer_table.py).

    python recipes/default_model/wer_check.py build/default-model/base3/last --data data3 --count 120

The audio goes through the checkpoint's whole tower (not the stored frames), as at run time. For
"silence" clips the measure is the share answered with nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from transformers import Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

from edgelalm.training.encoded import EncodedDataset
from edgelalm.training.evaluate import score, transcribe_torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, default=Path("data3"))
    parser.add_argument("--sets", default="test,unheard")
    parser.add_argument("--count", type=int, default=120, help="clips per set (the first ones)")
    parser.add_argument("--show", type=int, default=4, help="examples of errors to print per set")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(args.checkpoint, dtype=torch.float32).eval()
    processor = Qwen2AudioProcessor.from_pretrained(args.checkpoint)
    report = {}
    for name in args.sets.split(","):
        data = EncodedDataset(args.data / name)
        indices = range(min(args.count, len(data)))
        hypotheses, _ = transcribe_torch(model, processor, nn.Identity(), (data.audio(i) for i in indices))
        groups: dict[str, list[int]] = defaultdict(list)
        for i in indices:
            record = data.records[i]
            groups[f"kind {record['kind']}"].append(i)
            if record["kind"] != "silence":
                groups[f"engine {record['voice'].split(':')[0]}"].append(i)
                groups["speech"].append(i)
        rows = {}
        for group, members in sorted(groups.items()):
            if group == "kind silence":
                empty = sum(1 for i in members if not hypotheses[i].strip())
                rows[group] = f"{empty}/{len(members)} empty"
                continue
            result = score([data.texts[i] for i in members], [hypotheses[i] for i in members], 0, 1.0)
            rows[group] = f"{100 * result.wer:.1f}% WER ({len(members)} clips)"
        report[name] = rows
        print(f"{name}: " + json.dumps(rows, indent=1), file=sys.stderr)
        shown = 0
        for i in indices:
            if hypotheses[i] != data.texts[i] and shown < args.show:
                print(f"  {data.records[i]['voice']}: {data.texts[i]!r} -> {hypotheses[i]!r}", file=sys.stderr)
                shown += 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
