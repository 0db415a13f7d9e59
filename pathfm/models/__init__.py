"""Flax Linen modules: the Vision Transformer backbone and projection heads. No training logic."""
