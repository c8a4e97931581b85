"""Dataset loaders for recommenders and GNNs.

LightGCN/NGCF implicit-feedback splits (:mod:`recsys.data.implicit`), MovieLens 100K
(:mod:`recsys.data.movielens`), one-hot libFM CTR rows such as Frappe (:mod:`recsys.data.libfm`) and
Planetoid citation graphs through PyG (:mod:`recsys.data.planetoid`; torch_geometric is imported only
when a graph is loaded).
"""

from recsys.data.implicit import ImplicitDataset, load_implicit
from recsys.data.libfm import LibfmData, load_libfm, split_rows
from recsys.data.movielens import MovieLens, load_movielens
from recsys.data.planetoid import load_planetoid

__all__ = [
    "ImplicitDataset",
    "LibfmData",
    "MovieLens",
    "load_implicit",
    "load_libfm",
    "load_movielens",
    "load_planetoid",
    "split_rows",
]
