"""Representation similarity between modules and epochs (linear CKA), from the sweep's pooled activations."""
