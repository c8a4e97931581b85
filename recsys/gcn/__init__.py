"""Sampled GCN training on stock PyG: a CSR neighbor sampler behind PyG's ``BaseSampler``, a feature store
that gathers rows from pinned host memory on the GPU (zero-copy; PyTorch-Direct, Min et al., VLDB 2021),
and a trainer with a per-epoch time breakdown.
"""
