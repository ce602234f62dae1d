"""A learned linear map on the local model's sentence vectors, trained so that a paraphrase lands
nearer its own question than near misses of it do.

USE multilingual places "cancel my subscription" closer to "pause my subscription" than to a
reworded "how do I stop paying for this plan for good?": on the hand-written paraphrase sets in
benches/data/paraphrases, near misses were on median as similar to each other as paraphrases to
their questions, so no similarity rule could serve the paraphrases without serving the near
misses. One 512 x 512 matrix, trained on QQP's paraphrase pairs and on groups of near-miss
questions from other domains (scripts/train_cache_projection.py; the data it was trained on and
the sets it is judged on are in disjoint domains), pulls paraphrases together and near misses
apart in every language of the model. Applying it costs one small matrix product per text, on the
embedder's worker thread.

The weights ship inside the package (`paraphrase_projection.npz`); their version is part of the
embedder's name, so a cache snapshot taken with other vectors is refused, not misread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]

PROJECTION_FILE = Path(__file__).with_name("paraphrase_projection.npz")


@dataclass(frozen=True, slots=True)
class Projection:
    name: str
    weights: Vectors  # input dim x output dim

    @property
    def dim(self) -> int:
        return int(self.weights.shape[1])

    def apply(self, rows: Vectors) -> Vectors:
        """Unit rows in the projected space."""
        projected = np.asarray(rows, dtype=np.float32) @ self.weights
        norms = np.linalg.norm(projected, axis=1, keepdims=True)
        out: Vectors = (projected / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        return out


def load_projection(path: Path = PROJECTION_FILE) -> Projection:
    with np.load(path, allow_pickle=False) as data:
        weights = np.ascontiguousarray(data["weights"], dtype=np.float32)
        name = str(data["name"])
    if weights.ndim != 2 or not np.all(np.isfinite(weights)):
        raise ValueError(f"{path}: weights must be a finite 2-d matrix")
    return Projection(name=name, weights=weights)
