"""Recommenders: interaction and CTR data loaders (:mod:`recsys.data`), MF / LightGCN / NeuMF models,
dynamic sparse training at a constant parameter budget (DSL), low-rank CTR compression (Atomic Feature
Mimicking) and GCN training with zero-copy feature gathering (PyTorch-Direct).
"""
