"""Model sources. Each turns a MODEL spec into a `LoadedModel`: an eval-mode module that
returns logits, the preprocessing its own config declares, and its labels.

Specs: `timm:<arch>`, `torchvision:<arch>`, `hf:<dir>`, `<file>.pt2`, `<file>.pt|.ts`
(TorchScript), `package.module:factory`, `demo:digits`.
"""

from __future__ import annotations

from vitedge.models import sources  # noqa: F401  (registers the sources with base)
from vitedge.models.base import LoadedModel, load_model, parse_labels

__all__ = ["LoadedModel", "load_model", "parse_labels"]
