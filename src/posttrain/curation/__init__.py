"""Curating training data from the model's own samples (rejection sampling)."""
