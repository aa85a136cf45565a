"""Drift between reference and candidate logits, and accuracy when labels exist."""

from __future__ import annotations

import numpy as np


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _topk(logits: np.ndarray, k: int) -> np.ndarray:
    k = min(k, logits.shape[1])
    return np.argsort(-logits, axis=1, kind="stable")[:, :k]


def compare_logits(reference: np.ndarray, candidate: np.ndarray,
                   labels: np.ndarray | None = None) -> dict[str, float]:
    """Top-1 agreement, top-5 overlap, abs errors, cosine, KL(ref||cand); accuracy with labels."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"logit shapes differ: {ref.shape} vs {cand.shape}")
    diff = np.abs(ref - cand)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosine = np.where(norms > 0, (ref * cand).sum(axis=1) / np.maximum(norms, 1e-300), 1.0)
    p, q = _softmax(ref), _softmax(cand)
    kl = (p * (np.log(np.clip(p, 1e-12, None)) - np.log(np.clip(q, 1e-12, None)))).sum(axis=1)
    top5_ref, top5_cand = _topk(ref, 5), _topk(cand, 5)
    overlap = [len(set(a) & set(b)) / len(a) for a, b in zip(top5_ref, top5_cand)]
    out = {
        "samples": int(len(ref)),
        "top1_agreement": float((ref.argmax(1) == cand.argmax(1)).mean()),
        "top5_overlap": float(np.mean(overlap)),
        "max_abs_err": float(diff.max()),
        "mean_abs_err": float(diff.mean()),
        "cosine_min": float(cosine.min()),
        "cosine_mean": float(cosine.mean()),
        "kl_mean": float(max(kl.mean(), 0.0)),
        "kl_max": float(max(kl.max(), 0.0)),
    }
    if labels is not None:
        labels = np.asarray(labels)
        ref_acc = float((ref.argmax(1) == labels).mean())
        cand_acc = float((cand.argmax(1) == labels).mean())
        out.update({
            "ref_top1_acc": ref_acc,
            "top1_acc": cand_acc,
            "acc_delta": cand_acc - ref_acc,
            "acc_drop": ref_acc - cand_acc,
            "ref_top5_acc": float(np.mean([lbl in row for lbl, row in zip(labels, top5_ref)])),
            "top5_acc": float(np.mean([lbl in row for lbl, row in zip(labels, top5_cand)])),
        })
    return out


def per_class_accuracy(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float | None]:
    pred = np.asarray(logits).argmax(1)
    out: list[float | None] = []
    for c in range(num_classes):
        mask = labels == c
        out.append(float((pred[mask] == c).mean()) if mask.any() else None)
    return out
