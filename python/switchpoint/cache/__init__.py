"""The response cache: exact and semantic (FAISS) lookup, embedders, the hit guard, persistence."""
