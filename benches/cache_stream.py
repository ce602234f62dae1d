"""The semantic cache under live traffic: every question and paraphrase of a set asked once, in a
random order, a miss stored (as the sidecar does), a hit served and not stored.

The protocol of benches/cache_rules.py (every question cached before any paraphrase is asked)
never asks a question whose answer is missing while a near miss of it is cached. Live traffic does
that for the first asking of every question, and a wrong hit then repeats: the question served
from someone else's entry is never stored, so its later paraphrases find the same wrong entry.
This bench measures that: precision over the hits, and hits per opportunity (lookups whose own
question, or for QQP one of its duplicate cluster, was already cached). Lookups are decided by the
store's functions (switchpoint.cache.decide, the guard) over exact search of the stored vectors.

    .venv/bin/python -m benches.cache_stream          # QQP (6,000 texts of the report half) and
                                                       # the report paraphrase sets
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benches.cache_eval import RESULTS
from benches.cache_rules import Embeddings, LookupSet, Variant, sets, variants
from switchpoint.cache.config import SemanticConfig
from switchpoint.cache.decide import NO_RIVAL, Candidate, SemanticRule, servable
from switchpoint.cache.guard import agrees

QQP_TEXTS = 6000
SEED = 0


@dataclass(frozen=True)
class Live:
    set: str
    variant: str
    precision: float
    hits_per_opportunity: float
    hits: int


def live(lookups: LookupSet, embeddings: Embeddings, variant: Variant, limit: int | None) -> Live:
    config = SemanticConfig()
    rows = embeddings.embedder(variant.projected)
    question_rows, query_rows = rows(lookups.questions), rows(lookups.queries)
    texts = lookups.questions + lookups.queries
    vectors = np.concatenate([question_rows, query_rows])
    cluster = np.concatenate([lookups.cluster, lookups.cluster[lookups.truth]])
    order = np.random.default_rng(SEED).permutation(len(texts))[:limit]
    rule = SemanticRule(variant.floor, variant.margin, config.same_question)
    stored: list[int] = []
    seen: set[int] = set()
    hits = correct = opportunities = 0
    for item in order.tolist():
        opportunities += int(cluster[item]) in seen
        served = None
        if stored:
            similarity = vectors[stored] @ vectors[item]
            top = np.argsort(-similarity)[: config.candidates]
            candidates = [Candidate(float(similarity[j]), vectors[stored[j]]) for j in top]
            full = len(stored) > config.candidates
            unseen = float(similarity[top[-1]]) if full else NO_RIVAL
            for position in servable(candidates, rule, unseen_bound=unseen):
                entry = stored[top[position]]
                if not variant.guard or agrees(texts[item], texts[entry]).ok:
                    served = entry
                    break
        if served is None:
            stored.append(item)
            seen.add(int(cluster[item]))
        else:
            hits += 1
            correct += cluster[served] == cluster[item]
    return Live(
        set=lookups.name,
        variant=variant.name,
        precision=correct / hits if hits else 1.0,
        hits_per_opportunity=hits / opportunities if opportunities else 0.0,
        hits=hits,
    )


def stricter() -> list[Variant]:
    return [
        Variant("projection + rival test, floor 0.80", True, 0.80, SemanticConfig().margin),
        Variant("projection + rival test, floor 0.90", True, 0.90, SemanticConfig().margin),
        Variant("projection, cosine >= 0.95 + guard", True, 0.95, 0.0),
    ]


def run() -> Path:
    """Every variant on every report set, printed as it goes; the JSON's path."""
    embeddings = Embeddings()
    chosen = [v for v in variants() if v.name.startswith(("old default", "new default"))]
    results = []
    for lookups in sets("report"):
        limit = QQP_TEXTS if lookups.name.startswith("qqp") else None
        for variant in chosen + stricter():
            result = live(lookups, embeddings, variant, limit)
            results.append(result)
            print(
                f"{result.set:20s} {result.variant:46s} precision {result.precision:.3f}"
                f"  hits {100 * result.hits_per_opportunity:5.1f}% of opportunities"
                f" ({result.hits})",
                flush=True,
            )
    path = RESULTS / "cache_stream.json"
    path.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.parse_args()
    print(f"wrote {run()}")


if __name__ == "__main__":
    main()
