"""vqgen: two-stage discrete generative modelling (VQ-VAE tokenizers + PixelCNN/Transformer priors).

Public names are imported lazily so that ``import vqgen`` and the CLI start fast (the
Transformer prior pulls in ``transformers``).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "VectorQuantizer": "vqgen.tokenizers.quantizers",
    "VectorQuantizerConfig": "vqgen.tokenizers.quantizers",
    "ResidualVQ": "vqgen.tokenizers.quantizers",
    "ResidualVQConfig": "vqgen.tokenizers.quantizers",
    "QuantizerOutput": "vqgen.tokenizers.quantizers",
    "TokenizerOutput": "vqgen.tokenizers.base",
    "ImageTokenizer": "vqgen.tokenizers.image",
    "ImageTokenizerConfig": "vqgen.tokenizers.image",
    "AudioTokenizer": "vqgen.tokenizers.audio",
    "AudioTokenizerConfig": "vqgen.tokenizers.audio",
    "TextTokenizer": "vqgen.tokenizers.text",
    "TextTokenizerConfig": "vqgen.tokenizers.text",
    "TextCodes": "vqgen.tokenizers.text",
    "PixelCNNPrior": "vqgen.priors.pixelcnn",
    "PixelCNNPriorConfig": "vqgen.priors.pixelcnn",
    "TransformerPrior": "vqgen.priors.transformer",
    "TransformerPriorConfig": "vqgen.priors.transformer",
    "GenerationPipeline": "vqgen.pipeline",
    "TrainConfig": "vqgen.training",
    "train": "vqgen.training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vqgen' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
