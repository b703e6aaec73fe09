"""`multitower serve`: a local double of TF Serving (REST and gRPC), for laptops and tests.

Production runs TF Serving itself; this double follows its documented protocols
(g3doc/api_rest.md, the `tensorflow_serving/apis` protos) and its sources (messages, status
codes, HTTP statuses, version policy, labels, warmup) closely enough that a client tested
against it talks to TF Serving unchanged. Modules: `servable` (one loaded version),
`model_config` (the config checks TF Serving makes), `models` (the version manager),
`rest_json` and `rest` (the REST API), `grpc_service` (PredictionService and ModelService),
`metrics` (Prometheus), `server` (start and stop).

Python API (in-process, for tests and benchmarks)::

    from serving.double import project_model_config, start_server

    model_config, label_resolver = project_model_config(config)   # as `serving-config` builds it
    server = start_server(model_config, serving_config=config.serving, rest_port=0,
                          grpc_port=0, poll_seconds=1.0, label_resolver=label_resolver)
    server.rest_port, server.grpc_port      # the ports bound (0: free ports chosen by the OS)
    server.rest_url, server.grpc_target     # "http://127.0.0.1:PORT", "127.0.0.1:PORT"
    server.wait_for_version("ranker", 3)    # blocks until AVAILABLE; ServeError if it fails
    server.wait_for_label("ranker", "canary", 3)
    server.statuses("ranker")               # [VersionStatus(version, state, error_code, ...)]
    server.labels("ranker")                 # {"canary": 3, "stable": 2}
    server.stop()                           # or `with start_server(...) as server:`

`start_server` returns once the first loads (and their warmups) are done. A model server
config file is read with `read_model_config_file(path)`; pass
`config_reloader=model_config_file_reloader(path)` to follow its changes as TF Serving does.
"""

from serving.double.models import VersionStatus
from serving.double.server import (
    NOTICE,
    RunningServer,
    ServeError,
    model_config_file_reloader,
    project_model_config,
    read_model_config_file,
    start_server,
)

__all__ = ["NOTICE", "RunningServer", "ServeError", "VersionStatus", "model_config_file_reloader",
           "project_model_config", "read_model_config_file", "start_server"]
