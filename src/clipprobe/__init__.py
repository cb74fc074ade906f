"""clipprobe: what a vision backbone encodes, where (module) and when (epoch), with CLIP-mined concepts."""

__version__ = "0.1.0"
