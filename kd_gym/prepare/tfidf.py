"""TF-IDF + logistic-regression teachers: a second family of teachers, trained in seconds with scikit-learn.

A TF-IDF teacher is a folder of data, like a HuggingFace one, and is used by :class:`~kd_gym.teachers.TeacherPool`
the same way:

- ``config.json``: ``{"kd_gym_teacher": "tfidf", "id2label": {...}, "vectorizer": {TfidfVectorizer options}}``;
- ``vocabulary.json``: token -> column;
- ``model.safetensors``: ``idf`` (V,), ``coef`` (C, V), ``intercept`` (C,).

Its logits are the logistic regression's decision function ``tfidf(text) @ coef.T + intercept`` (softmax of which is
the classifier's predicted distribution). Nothing is unpickled on load.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

KIND = "tfidf"
VECTORIZER = {"lowercase": True, "ngram_range": [1, 2], "min_df": 2, "sublinear_tf": True, "max_features": 50000}


def is_tfidf_teacher(folder: str | Path) -> bool:
    """True when ``folder`` holds a TF-IDF teacher (its config.json says so)."""
    config = Path(folder) / "config.json"
    return config.exists() and json.loads(config.read_text()).get("kd_gym_teacher") == KIND


def train_tfidf_teacher(texts: Sequence[str], labels: np.ndarray, label_names: list[str], folder: str | Path, *,
                        c: float = 1.0, seed: int = 0) -> Path:
    """Fit TF-IDF + multinomial logistic regression on ``texts`` / ``labels`` (N,) and save it to ``folder``.

    Classes absent from the training rows keep a very low intercept, so the teacher still outputs C logits.
    :param c: inverse regularisation strength of the logistic regression.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    options = dict(VECTORIZER, min_df=min(VECTORIZER["min_df"], max(1, len(texts) // 50)))
    vectorizer = TfidfVectorizer(**{**options, "ngram_range": tuple(options["ngram_range"])})
    features = vectorizer.fit_transform(list(texts))
    model = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(features, labels)
    num_labels = len(label_names)
    coef = np.zeros((num_labels, features.shape[1]), dtype=np.float32)
    intercept = np.full(num_labels, -20.0, dtype=np.float32)  # classes never seen: practically never predicted
    if len(model.classes_) == 2:  # binary LR stores one row: the second class's score against the first's
        coef[model.classes_[1]], intercept[model.classes_[1]] = model.coef_[0], model.intercept_[0]
        intercept[model.classes_[0]] = 0.0
    else:
        coef[model.classes_], intercept[model.classes_] = model.coef_, model.intercept_
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocabulary = {token: int(index) for token, index in vectorizer.vocabulary_.items()}
    (folder / "vocabulary.json").write_text(json.dumps(vocabulary))
    save_file({"idf": torch.tensor(vectorizer.idf_, dtype=torch.float32), "coef": torch.from_numpy(coef),
               "intercept": torch.from_numpy(intercept)}, str(folder / "model.safetensors"))
    config = {"kd_gym_teacher": KIND, "id2label": {str(i): name for i, name in enumerate(label_names)},
              "vectorizer": options, "C": c, "train_rows": len(texts)}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def tfidf_labels(folder: str | Path) -> list[str]:
    """The teacher's class names, in its logit order."""
    id2label = json.loads((Path(folder) / "config.json").read_text())["id2label"]
    return [id2label[str(i)] for i in range(len(id2label))]


def tfidf_logits(folder: str | Path, texts: Sequence[str], pairs: Sequence[str] | None = None) -> torch.Tensor:
    """(N, C) float32 logits of the TF-IDF teacher in ``folder`` on ``texts`` (pairs are joined to their text)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    options = dict(config["vectorizer"], ngram_range=tuple(config["vectorizer"]["ngram_range"]))
    options.pop("max_features", None)
    options.pop("min_df", None)
    vocabulary = json.loads((folder / "vocabulary.json").read_text())
    weights = load_file(str(folder / "model.safetensors"))
    vectorizer = TfidfVectorizer(vocabulary=vocabulary, **options)
    vectorizer.idf_ = weights["idf"].double().numpy()
    inputs = list(texts) if pairs is None else [f"{text} {pair}" for text, pair in zip(texts, pairs)]
    features = vectorizer.transform(inputs)  # sparse (N, V)
    logits = features @ weights["coef"].double().numpy().T + weights["intercept"].double().numpy()
    return torch.as_tensor(np.asarray(logits), dtype=torch.float32)
