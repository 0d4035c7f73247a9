"""A local endpoint that speaks RunPod's v2 queue API, for development and tests.

RunPod's own local API (`handler.py --rp_serve_api`) has no /cancel, /health, queue or min workers,
so a client cannot be tested against it. This server has them, and runs real workers: each is
`python handler.py` in RunPod's *worker* mode (RUNPOD_WEBHOOK_GET_JOB set), fetching jobs from this
server's job-take route and posting progress and results back, exactly as on RunPod.

    wan-i2v dev-endpoint --port 8080 --api-key dev-key        (WAN_MODEL etc. pass to the workers)
    RUNPOD_ENDPOINT_BASE_URL=http://127.0.0.1:8080/v2 RUNPOD_ENDPOINT_ID=dev ...

Routes under /v2/{endpoint_id}: POST /run, POST /runsync, GET|POST /status/{id}, POST /cancel/{id},
POST /retry/{id}, POST /purge-queue, GET /health; GET /v2/serverless/{endpoint_id} reads the endpoint's
`workers` ({min, max, idleTimeout}) and PATCH sets it, replacing the whole object (fields left out take
RunPod's defaults: the strictest reading of RunPod's REST v2, so a client that sends only `min` is caught).
All need `Authorization: Bearer <api key>`. Extra routes for tests:
GET /dev/jobs (every submission) and POST /dev/faults {"statuses": [429, 503]} (answers the next
queue-API requests with those statuses).

    queue.py     the pure state machine: jobs, states, policies, workers' job-take protocol
    pool.py      the worker processes (start, reap, stop; parent-death signal)
    routes.py    the HTTP route table
    endpoint.py  DevEndpoint, gluing them behind one lock; serve_until_signalled for the command
"""

from .endpoint import DevEndpoint, EndpointStats, serve_until_signalled

__all__ = ["DevEndpoint", "EndpointStats", "serve_until_signalled"]
