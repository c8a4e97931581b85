"""Training pipelines: the inference-free sparse encoder (teacher mining, distillation, checkpoints)."""
