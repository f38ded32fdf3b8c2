"""clmap: continued pre-training with a bidirectional cross-lingual mapping objective."""

from pathlib import Path

# kernels/ sits at the repository top level (see docs/design.md) and is installed as ``clmap.kernels``.
# When clmap is imported straight from a source checkout (``python -m clmap.train`` from the repo
# root puts the checkout ahead of the installed finder), make the same import name work.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "kernels" / "__init__.py").is_file() and str(_checkout) not in __path__:
    __path__.append(str(_checkout))

ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED_CORPUS = ASSETS / "corpus"

__version__ = "0.1.0"
