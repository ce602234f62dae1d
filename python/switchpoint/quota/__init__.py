"""Who may spend what: `gate` (rules -> Rust gate instances, reserve/settle/release), `queue` (a
model's priority queue) and `scheduler` (every model's), `instances` and `labels` (bounded
per-scope state), `shared/` (budgets and rate limits leased from Redis)."""
