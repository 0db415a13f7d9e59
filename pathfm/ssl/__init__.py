"""Self-supervised methods behind one interface (`base.Method`): DINO, DINOv2 and MAE, with
each loss in a small module of pure functions of arrays."""
