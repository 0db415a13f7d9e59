"""Flax Linen modules and their array ops: the Vision Transformer backbone, the projection
heads, the MAE encoder/decoder with patchify and random masking, sin-cos embeddings."""
