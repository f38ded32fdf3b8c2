"""clmap: continued pre-training with a bidirectional cross-lingual mapping objective."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED_CORPUS = ASSETS / "corpus"

__version__ = "0.1.0"
