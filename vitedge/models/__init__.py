"""Model sources. Each turns a MODEL spec into a `LoadedModel`: an eval-mode module that
returns logits, the preprocessing its own config declares, and its labels.

Specs: `timm:<arch>`, `torchvision:<arch>`, `hf:<dir>`, `<file>.pt2`, `<file>.pt|.ts`
(TorchScript), `package.module:factory`, `demo:digits`.
"""

from __future__ import annotations

from vitedge.models.base import LoadedModel, load_model, parse_labels, source_names

__all__ = ["LoadedModel", "load_model", "parse_labels", "source_names"]
