"""Training data for the default model: synthetic speech of voice-assistant requests.

One module per stage, read top to bottom:

- `texts`: a seeded generator of English requests, numbers and times written as words, with a
  train/test split by sentence (held-out names and cities only in test) and `normalize_transcript`.
- `speech`: espeak-ng rendering (`render`), the voices and their train/test split, and numpy
  augmentation (`augment`) that the training loop applies on the fly.
- `dataset`: `build_dataset` renders a split in parallel into int16 shards plus `metadata.jsonl`;
  `SpeechDataset` reads it back, memory-mapped.
"""
