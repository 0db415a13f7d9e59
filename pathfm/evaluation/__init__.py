"""Representation monitors and downstream evaluation."""
