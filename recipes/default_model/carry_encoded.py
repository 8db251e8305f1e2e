"""Carry an encoded folder stored below a tower layer further up (edgelalm.training.encoded.encode_further).

    python recipes/default_model/carry_encoded.py data4/train data4-top/train --checkpoint CKPT --below-layer 3
    python recipes/default_model/carry_encoded.py data4/train data5/train --checkpoint CKPT   # the tower's output

What stays frozen is then computed once: training that tunes only the layers from --below-layer
up, or a LoRA realignment (`edgelalm finetune --data`) of a model whose top layers were tuned.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgelalm.errors import EdgelalmError
from edgelalm.training.encoded import encode_further


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--checkpoint", type=Path, required=True, help="whose tower carries the frames up")
    parser.add_argument("--below-layer", type=int, default=None, help="store below this layer (default: the output)")
    args = parser.parse_args(argv)
    encode_further(args.source, args.out, args.checkpoint, args.below_layer)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except EdgelalmError as error:
        print(f"carry_encoded: error: {error}", file=sys.stderr)
        sys.exit(1)
