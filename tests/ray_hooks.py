"""Runs in every Ray worker of the test cluster (``worker_process_setup_hook``): each (module, probe)
batch of fits waits ``CLIPPROBE_TEST_FIT_DELAY`` seconds, and each block of a tune trial
``CLIPPROBE_TEST_TRIAL_DELAY``, so a test can kill a worker mid-checkpoint or mid-trial."""

from __future__ import annotations

import os
import time


def slow_fits() -> None:
    import clipprobe.sweep.plan as sweep

    delay = float(os.environ.get("CLIPPROBE_TEST_FIT_DELAY", "0"))
    real = sweep.evaluate_concepts

    def slowed(*args, **kwargs):
        time.sleep(delay)
        return real(*args, **kwargs)

    sweep.evaluate_concepts = slowed

    import clipprobe.tuning.studies as tuning

    trial_delay = float(os.environ.get("CLIPPROBE_TEST_TRIAL_DELAY", "0"))
    fit_block = tuning.fit_many

    def slowed_block(*args, **kwargs):
        time.sleep(trial_delay)
        return fit_block(*args, **kwargs)

    tuning.fit_many = slowed_block
