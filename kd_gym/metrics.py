"""The task metrics other than accuracy, on class ids: F1 of the positive class and the multi-class Matthews
correlation (what :meth:`kd_gym.tasks.Task.compute_metrics` reports for MRPC / QQP and CoLA). Plain numpy: the env
scores the dev subset every ``reward_interval`` steps, where scikit-learn's input checks would cost more than the
counting."""

from __future__ import annotations

import numpy as np


def binary_f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """F1 of the positive class 1: 2TP / (2TP + FP + FN); 0 when there is no positive at all."""
    true_pos = np.sum((predictions == 1) & (labels == 1))
    false_pos = np.sum((predictions == 1) & (labels != 1))
    false_neg = np.sum((predictions != 1) & (labels == 1))
    denominator = 2 * true_pos + false_pos + false_neg
    return float(2 * true_pos / denominator) if denominator else 0.0


def matthews_correlation(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> float:
    """Multi-class Matthews correlation (Gorodkin's R_K, as in scikit-learn); 0 when it is undefined."""
    confusion = np.zeros((num_labels, num_labels), dtype=np.float64)
    np.add.at(confusion, (labels, predictions), 1)
    true_per_class, pred_per_class = confusion.sum(axis=1), confusion.sum(axis=0)
    correct, total = np.trace(confusion), confusion.sum()
    cov_pred_true = correct * total - true_per_class @ pred_per_class
    cov_pred_pred = total**2 - pred_per_class @ pred_per_class
    cov_true_true = total**2 - true_per_class @ true_per_class
    denominator = np.sqrt(cov_pred_pred * cov_true_true)
    return float(cov_pred_true / denominator) if denominator else 0.0
