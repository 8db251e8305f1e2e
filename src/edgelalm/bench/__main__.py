"""`python -m edgelalm.bench JOB`: the measurement worker (edgelalm.bench.measure)."""

from edgelalm.bench.measure import worker
from edgelalm.isolation import serve_json_job

serve_json_job(worker)
