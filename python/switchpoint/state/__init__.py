"""Bounded per-tenant and per-stage state: which label values metrics and stats keep apart
(`labels`), and the cap and idle expiry of the token gate's scoped rule instances (`instances`);
`config` is their config section (`server.state`)."""
