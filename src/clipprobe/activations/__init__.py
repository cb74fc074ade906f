"""Activations of probe modules: decoding, the hooked forward pass, precision, the on-disk cache."""
