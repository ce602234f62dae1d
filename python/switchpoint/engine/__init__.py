"""The request path: `path` (the sequence Chat and ChatStream share: cache, chain, hedging),
`attempts` (one model's turn), `calls` and `billing` (a call's book-keeping and charge),
`resilience` (failure actions, backoff, breakers), `building` (an engine from a config)."""
