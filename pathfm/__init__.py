"""pathfm: self-supervised pathology foundation models (DINO, DINOv2, MAE) in JAX/Flax."""

__version__ = "0.1.0"
