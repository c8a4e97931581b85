"""Dataset loaders for recommenders and GNNs.

LightGCN/NGCF implicit-feedback splits (:mod:`recsys.data.implicit`), interaction logs of your own
(:mod:`recsys.data.interactions_table`), MovieLens 100K (:mod:`recsys.data.movielens`), one-hot libFM
CTR rows such as Frappe (:mod:`recsys.data.libfm`), CTR datasets with field schemas
(:mod:`recsys.data.ctr`, tables of your own: :mod:`recsys.data.ctr_table`), synthetic power-law CTR
rows (:mod:`recsys.data.synthetic_ctr`) and Planetoid citation graphs through PyG
(:mod:`recsys.data.planetoid`; torch_geometric is imported only when a graph is loaded). Table and text
files are read by :mod:`recsys.data.table_file` and :mod:`recsys.data.text_file`.
"""
