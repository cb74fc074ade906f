"""Units: which channels of a probed module carry a concept, how many it takes, and since which epoch."""
