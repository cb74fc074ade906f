"""Pipeline steps that need every layer below: resolve a step's config, open its run, run its work."""


class StepFailed(RuntimeError):
    """A step's run that ended FAILED for a reason its one-line message names (a data error found after the run
    opened, e.g. nothing to import): the CLI prints it and exits 1, as it does for a file or store error."""
