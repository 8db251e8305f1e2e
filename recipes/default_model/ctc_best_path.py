"""What each compressor's audio embeddings carry for the CTC head: the head's best path (argmax per
position, repeats and blanks removed) as a transcript, its WER per held-out set. Each compressor
with the checkpoint's head (trained on uncompressed embeddings) and with its adapter's head
realigned to it (`edgelalm finetune`), as the bundles decode.

    python recipes/default_model/ctc_best_path.py --data data3 --sets test,unheard --count 200
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from edgelalm.compression import CompressorSpec
from edgelalm.export.compressor import build_compressor
from edgelalm.export.ctc import CtcHead, has_ctc_head, load_ctc_head
from edgelalm.pretrained import default_adapter_dir, default_model_dir
from edgelalm.training.encoded import EncodedDataset
from edgelalm.training.evaluate import score
from edgelalm.training.finetune import load_for_training
from edgelalm.training.train import best_path_ids

COMPRESSORS = ("none", "avg2", "avg3", "sample3", "unseg")


def best_path_wer(model, tokenizer, compressor: torch.nn.Module, head: CtcHead, data: EncodedDataset, count: int):
    projector = model.model.multi_modal_projector
    references, hypotheses = [], []
    with torch.no_grad():
        for index in range(min(count, len(data))):
            frames, text = data[index]
            embeddings = projector(compressor(torch.from_numpy(np.asarray(frames, dtype=np.float32))))
            references.append(text)
            hypotheses.append(tokenizer.decode(best_path_ids(head(embeddings))).strip())
    return round(100 * score(references, hypotheses, 0, 1.0).wer, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="default: the shipped model")
    parser.add_argument("--data", type=Path, default=Path("data3"))
    parser.add_argument("--sets", default="test,unheard")
    parser.add_argument("--count", type=int, default=200, help="clips per set (the first ones)")
    args = parser.parse_args(argv)
    model_dir = args.model or default_model_dir()
    model, processor = load_for_training(model_dir, "cpu")
    embeddings = model.get_input_embeddings().weight.detach()
    heads = {"checkpoint": load_ctc_head(model_dir, embeddings)}
    sets = {name: EncodedDataset(args.data / name) for name in args.sets.split(",")}
    results: dict[str, dict] = {}
    for label in COMPRESSORS:
        spec = CompressorSpec.from_label(label)
        adapter = default_adapter_dir(spec) if args.model is None else None
        if adapter is not None and has_ctc_head(adapter):
            heads[label] = load_ctc_head(adapter, embeddings)
        for whose in ("checkpoint", label):
            if whose in heads:
                key = "checkpoint_head" if whose == "checkpoint" else "realigned_head"
                results.setdefault(label, {})[key] = {
                    name: best_path_wer(
                        model, processor.tokenizer, build_compressor(spec), heads[whose], data, args.count
                    )
                    for name, data in sets.items()
                }
                print(label, key, results[label][key], file=sys.stderr)
    print(json.dumps({"model": str(model_dir), "count": args.count, "best_path_wer": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
