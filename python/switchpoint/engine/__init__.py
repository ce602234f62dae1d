"""The request path: `path` (decide, then the one sequence Chat and ChatStream share), `caching`
(the cache on that path), `hedging` (the first two models raced), `attempts` (one model's turn,
whole or streamed), `calls` and `billing` (a call's book-keeping and charge), `evaluating`
(hooks and cascades on that path), `resilience` (failure actions, backoff, breakers), `building`
(an engine from a config)."""
