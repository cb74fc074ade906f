"""Pipeline steps that need every layer below: resolve a step's config, open its run, run its work."""
