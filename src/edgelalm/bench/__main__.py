"""`python -m edgelalm.bench JOB`: the measurement worker (edgelalm.bench.measure)."""

import sys

from edgelalm.bench.measure import _worker

_worker(sys.argv[1:])
