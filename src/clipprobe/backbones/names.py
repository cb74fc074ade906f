"""Names the rest of the pipeline shares with the backbones, without importing torch."""

# The model's output (batch, classes) as a probe module: its units are the classes, pooled = itself, no maps.
# Probed only when asked for (``--modules module:3,logits``); a model's own submodule of that name wins.
LOGITS = "logits"
