"""Predicted quality per request: outcomes (files, the Feedback RPC, hooks) in, a quality per
model out, used by scoring in place of the configured one (docs/routing.md, "Predicted quality").

`config` (the `routing.predictor` section), `outcomes` (outcome files), `store` (the outcomes and
their embeddings, FAISS), `predict` (the blend), `recent` (requests Feedback may name), `service`
(`QualityPredictor`, what the sidecar runs). Import the modules themselves: this package imports
nothing, so the config schema can use its section without pulling in the rest.
"""
