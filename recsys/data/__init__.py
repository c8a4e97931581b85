"""Dataset loaders for recommenders and GNNs.

LightGCN/NGCF implicit-feedback splits (:mod:`recsys.data.implicit`), MovieLens 100K
(:mod:`recsys.data.movielens`), one-hot libFM CTR rows such as Frappe (:mod:`recsys.data.libfm`) and
Planetoid citation graphs through PyG (:mod:`recsys.data.planetoid`; torch_geometric is imported only
when a graph is loaded).
"""
