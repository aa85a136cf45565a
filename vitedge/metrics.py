"""Drift between reference and candidate logits, and accuracy when labels exist."""

from __future__ import annotations

from typing import Any

import numpy as np


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _topk(logits: np.ndarray, k: int) -> np.ndarray:
    k = min(k, logits.shape[1])
    return np.argsort(-logits, axis=1, kind="stable")[:, :k]


def per_sample_kl(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """KL(softmax(ref) || softmax(cand)) for each sample, in nats."""
    p, q = _softmax(np.asarray(reference)), _softmax(np.asarray(candidate))
    return (p * (np.log(np.clip(p, 1e-12, None)) - np.log(np.clip(q, 1e-12, None)))).sum(axis=1)


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
    kl = per_sample_kl(ref, cand)
    top5_ref, top5_cand = _topk(ref, 5), _topk(cand, 5)
    overlap = [len(set(a) & set(b)) / len(a) for a, b in zip(top5_ref, top5_cand, strict=True)]
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
            "ref_top5_acc": float(np.mean([lbl in row for lbl, row in zip(labels, top5_ref, strict=True)])),
            "top5_acc": float(np.mean([lbl in row for lbl, row in zip(labels, top5_cand, strict=True)])),
        })
    return out


def per_class_accuracy(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float | None]:
    pred = np.asarray(logits).argmax(1)
    out: list[float | None] = []
    for c in range(num_classes):
        mask = labels == c
        out.append(float((pred[mask] == c).mean()) if mask.any() else None)
    return out


def per_class_drift(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None,
                    class_names: list[str]) -> list[dict[str, Any]]:
    """Per class: top-1 agreement and, with labels, both accuracies and their delta.

    Samples are grouped by their label, or by the reference's top-1 class when unlabelled.
    Classes with no samples are left out.
    """
    ref_pred, cand_pred = np.asarray(reference).argmax(1), np.asarray(candidate).argmax(1)
    groups = np.asarray(labels) if labels is not None else ref_pred
    num_classes = len(class_names)
    ref_acc = per_class_accuracy(reference, groups, num_classes) if labels is not None else None
    cand_acc = per_class_accuracy(candidate, groups, num_classes) if labels is not None else None
    rows: list[dict[str, Any]] = []
    for c in range(num_classes):
        mask = groups == c
        if not mask.any():
            continue
        row: dict[str, Any] = {"class": c, "name": class_names[c], "count": int(mask.sum()),
                               "agreement": float((ref_pred[mask] == cand_pred[mask]).mean())}
        if ref_acc is not None and cand_acc is not None:
            row.update(ref_acc=ref_acc[c], acc=cand_acc[c], delta=cand_acc[c] - ref_acc[c])  # type: ignore[operator]
        rows.append(row)
    return rows


def worst_disagreements(reference: np.ndarray, candidate: np.ndarray, names: list[str],
                        labels: np.ndarray | None, class_names: list[str], k: int) -> list[dict[str, Any]]:
    """The k samples whose top-1 class differs, most divergent (KL) first, by file name."""
    ref_pred, cand_pred = np.asarray(reference).argmax(1), np.asarray(candidate).argmax(1)
    kl = per_sample_kl(reference, candidate)
    p, q = _softmax(np.asarray(reference)), _softmax(np.asarray(candidate))
    differ = np.flatnonzero(ref_pred != cand_pred)
    order = differ[np.argsort(-kl[differ], kind="stable")][:k]
    return [{
        "file": names[i],
        "label": class_names[int(labels[i])] if labels is not None else None,
        "ref_pred": class_names[int(ref_pred[i])],
        "ref_prob": float(p[i, ref_pred[i]]),
        "pred": class_names[int(cand_pred[i])],
        "prob": float(q[i, cand_pred[i]]),
        "kl": float(max(kl[i], 0.0)),
    } for i in order]
