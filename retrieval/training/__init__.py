"""Training pipelines: the inference-free sparse encoder in two stages (teacher mining, distillation,
checkpoints: :mod:`.sparse`; the query table on frozen document vectors: :mod:`.query_table`), and the
progressive fine-tuning of a dense query encoder on code-mined candidates (BiDR, :mod:`.progressive`)."""
