"""Recommendation models: collaborative filtering (MF-BPR, LightGCN, NeuMF) and CTR models (:mod:`.ctr`)."""
