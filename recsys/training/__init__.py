"""Training loops for recommenders: collaborative filtering and CTR models."""
