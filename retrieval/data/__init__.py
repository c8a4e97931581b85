"""Dataset loaders for retrieval: the BEIR file layout (:mod:`retrieval.data.beir`)."""
