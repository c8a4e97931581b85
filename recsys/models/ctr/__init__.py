"""CTR models (DLRM, WDL, DeepFM, DCNv2) that take any embedding table from :mod:`embeddings`."""
