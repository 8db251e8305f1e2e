"""edgelalm: compressed audio language models on edge devices.

The data path, one module per stage:
audio -> features -> encoder -> compressor -> projector -> decoder -> text.
`edgelalm.export` writes each stage's artifact into a bundle; the runtime reads it back.
"""

__version__ = "0.1.0"
