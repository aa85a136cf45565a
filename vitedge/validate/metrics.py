"""Re-export of `vitedge.metrics` (numpy-only drift metrics), kept for existing imports."""

from vitedge.metrics import compare_logits, per_class_accuracy, per_class_drift, per_sample_kl, worst_disagreements

__all__ = ["compare_logits", "per_class_accuracy", "per_class_drift", "per_sample_kl", "worst_disagreements"]
