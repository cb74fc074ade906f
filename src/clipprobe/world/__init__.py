"""The built-in concept world: generated images whose shape, colour and pattern are known exactly."""
