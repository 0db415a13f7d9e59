"""Train state, optimiser, schedules, the method-agnostic loop and checkpointing."""
