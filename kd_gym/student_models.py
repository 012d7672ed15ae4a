"""The students: the models :class:`~kd_gym.student.StudentTrainer` trains, each returning (logits, representation).

- :class:`FullStudent`: a small transformer trained from tokens, initialised from the first layers of a
  teacher-family checkpoint (default: the first 2 layers of MiniLM).
- the lite students, the same decision problem at a fraction of the cost, so agents can be benchmarked on a CPU:
  :class:`NgramStudent` (the default: a fastText-style bag of hashed uni- and bigrams trained from tokens) and
  :class:`LiteStudent` (a small MLP head over frozen, cached sentence embeddings).

``kd_gym.student`` re-exports them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kd_gym.prepare.embeddings import mean_pool
from kd_gym.sparse import bag_sum, real_bag_sum


class LiteStudent(nn.Module):
    """An MLP over sentence embeddings: (B, D) -> logits (B, C) and representation (B, hidden).

    :param input_size: embedding size D.
    :param num_labels: C.
    :param hidden_size: hidden units (0: a linear classifier; the representation is then the input).
    :param dropout: dropout on the hidden layer.
    """

    def __init__(self, input_size: int, num_labels: int, hidden_size: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.representation_size = hidden_size or input_size
        self.body = (
            nn.Sequential(nn.Linear(input_size, hidden_size), nn.GELU(), nn.Dropout(dropout))
            if hidden_size else nn.Identity()
        )
        self.classifier = nn.Linear(self.representation_size, num_labels)
        #: the split inputs forward() reads (a batch gathers these only)
        self.input_names = ("embeddings",)
        #: where the training dropout masks are drawn from (None: torch's global generator); set by
        #: :class:`StudentTrainer` on a CPU to the student's own stream
        self.generator: torch.Generator | None = None

    def fresh_modules(self) -> list[nn.Module]:
        """The modules drawn at random on a new student (all of them: nothing is pre-trained)."""
        return [m for m in self.modules() if isinstance(m, nn.Linear)]

    def forward(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dropout = self.body[2].p if isinstance(self.body, nn.Sequential) else 0.0
        if self.generator is None or not self.training or not 0.0 < dropout < 1.0:
            representation = self.body(embeddings)
        else:  # torch's CPU dropout, its mask drawn from self.generator: x * bernoulli(1 - p) / (1 - p)
            hidden = self.body[1](self.body[0](embeddings))
            keep = 1.0 - dropout
            representation = hidden * torch.empty_like(hidden).bernoulli_(keep, generator=self.generator).div_(keep)
        return self.classifier(representation), representation


class NgramStudent(nn.Module):
    """fastText-style: the mean of hashed uni- and bigram embeddings, then a linear layer: ids (B, L) -> logits
    (B, C) and representation (B, dim), the mean embedding.

    Everything is trained from scratch, so the student starts knowing nothing of the language: what it learns it
    learns from the gold labels and the teachers (the classic target for distilling transformers into something
    small and fast).

    :param buckets: rows of the embedding table (id 0 pads and stays zero).
    :param num_labels: C.
    :param dim: embedding size.
    :param sparse: a training step gives the table a sparse gradient of the rows its batch touched, and
        :class:`StudentTrainer` updates only those rows (:class:`~kd_gym.sparse.LazyAdamW`), as fastText does; False:
        a dense gradient and AdamW over the whole table on every step.
    :param sgd_lr: the table rows take fastText's SGD from this learning rate, decaying linearly over ``sgd_steps``
        updates (:func:`~kd_gym.sparse.sgd_lr`; implies ``sparse``); None: AdamW. The classifier takes AdamW either way.
    :param sgd_steps: the updates the SGD learning rate decays over (None: constant).
    """

    def __init__(self, buckets: int, num_labels: int, dim: int = 32, sparse: bool = False,
                 sgd_lr: float | None = None, sgd_steps: int | None = None) -> None:
        super().__init__()
        self.representation_size = dim
        self.sparse = sparse or sgd_lr is not None
        self.sgd_lr, self.sgd_steps = sgd_lr, sgd_steps
        #: the split inputs forward() reads (a batch gathers these only; not the embedding the observation shows)
        self.input_names = ("ngram_ids",)
        # nn.Embedding and a masked mean rather than nn.EmbeddingBag: the same numbers, and a double backward (the
        # per-pair credit and the meta-gradient rival differentiate twice; EmbeddingBag's backward has no derivative)
        self.embedding = nn.Embedding(buckets, dim, padding_idx=0)
        self.classifier = nn.Linear(dim, num_labels)
        self._init_embedding()
        #: no dropout: nothing is drawn in a step (the trainer hands its generator here, as to LiteStudent)
        self.generator: torch.Generator | None = None

    def _init_embedding(self) -> None:
        # fastText's init, uniform in +-1/dim: a mean of a few dozen such rows starts near 0, so what the student
        # predicts comes from what it learned, not from the random table (torch's N(0, 1) would dominate it)
        nn.init.uniform_(self.embedding.weight, -1.0 / self.representation_size, 1.0 / self.representation_size)
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    def fresh_modules(self) -> list[nn.Module]:
        """The modules drawn at random on a new student: all of it (:meth:`reset_parameters`)."""
        return [self]

    def reset_parameters(self) -> None:
        """A new draw of the embedding table and the classifier."""
        self._init_embedding()
        self.classifier.reset_parameters()

    @torch.no_grad()
    def projected_table(self) -> torch.Tensor:
        """(V, C) every table row through the classifier's weights: one pass over the table, after which a
        prediction gathers C numbers per id instead of ``dim`` (:meth:`predict_logits`)."""
        return torch.mm(self.embedding.weight, self.classifier.weight.t())

    @torch.no_grad()
    def predict_logits(self, ngram_ids: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        """(B, C) eval logits from :meth:`projected_table`: the mean of the real ids' projected rows plus the bias,
        summed over the real positions only (:func:`~kd_gym.sparse.real_bag_sum`). The classifier is linear, so
        these are :meth:`forward`'s logits summed in another order (~1e-7 apart); the sparse student evaluates this
        way, as do its stacked copies (kd_gym.stacked_ngrams): a dev evaluation of 16 students gathers 12 bytes per
        real id from 16 tables of 192 KB instead of 128 bytes per padded position from 16 of 2 MB."""
        real = ngram_ids != 0
        count = real.sum(1, keepdim=True).to(projected.dtype).clamp_min(1.0)
        total, _, _ = real_bag_sum(projected, ngram_ids.long(), real)
        return total / count + self.classifier.bias

    def forward(self, ngram_ids: torch.Tensor, **frozen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:param frozen: other inputs a split may carry (the frozen sentence embedding the observation can show,
        ``include_embedding``); the student does not read them."""
        # The padding row (id 0) is zero and gets no gradient (padding_idx), so the sum over all L positions is the
        # sum over the real ids: no mask to multiply by (a pass over (B, L, dim) saved; the same numbers).
        count = (ngram_ids != 0).sum(1, keepdim=True).to(self.embedding.weight.dtype).clamp_min(1.0)  # (B, 1)
        # training the sparse student: the same sum with a sparse table gradient (fastText's SGD: over the real
        # positions only, within ~3e-7 of this padded sum)
        if self.sparse and self.training and torch.is_grad_enabled():
            total = bag_sum(ngram_ids, self.embedding.weight, per_position=self.sgd_lr is not None)
        else:
            total = self.embedding(ngram_ids).sum(1)
        representation = total / count  # (B, dim)
        return self.classifier(representation), representation


class FullStudent(nn.Module):
    """A HuggingFace sequence classifier trained from tokens: inputs (B, L) -> logits (B, C), representation (B, H).

    :param checkpoint: hub id or folder of a teacher-family encoder.
    :param num_labels: C.
    :param num_layers: keep the first ``num_layers`` transformer layers (None: all).
    """

    def __init__(self, checkpoint: str | Path, num_labels: int, num_layers: int | None = 2) -> None:
        super().__init__()
        from kd_gym.prepare.cache import resolve_model_folder
        from kd_gym.teachers import load_classifier

        extra = {"num_hidden_layers": num_layers} if num_layers else {}
        self.model, self.tokenizer = load_classifier(
            resolve_model_folder(checkpoint), num_labels=num_labels, ignore_mismatched_sizes=True, **extra
        )
        self.representation_size = self.model.config.hidden_size

    def fresh_modules(self) -> list[nn.Module]:
        """The modules drawn at random on a new student: the classification head (the encoder is pre-trained)."""
        return [m for m in self.model.classifier.modules() if isinstance(m, nn.Linear)]

    def forward(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(**inputs, output_hidden_states=True)
        return out.logits, mean_pool(out.hidden_states[-1], inputs["attention_mask"])
