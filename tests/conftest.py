"""Settings for the whole test suite (fixtures live next to the tests that use them).

Beam jobs run in memory unless a test (or the environment) asks for another mode: the default
engine (`multi_processing`, one worker per core; `multitower.beam_options`) starts worker
processes, which costs seconds per job. The variable is set in the environment, so that the
`multitower` commands tests start as processes inherit it. The test of the default engine
(`tests/pipeline/test_runners.py`) removes it, and a few tests pass `multi_processing`.
"""

import os

from multitower.beam_options import MODE_ENV

os.environ.setdefault(MODE_ENV, "in_memory")  # a mode set outside the suite wins
