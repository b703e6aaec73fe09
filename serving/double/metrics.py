"""Prometheus metrics of the TF Serving double, under TF Serving's metric names.

TF Serving exports TensorFlow's monitoring metrics with `/` turned into `:` (its
util/prometheus_exporter.cc), and counts requests in servables/tensorflow/util.cc:

- `/tensorflow/serving/request_count` {model_name, status}: a counter of Predict, Classify and
  Regress requests, `status` the code name (`OK`, `INVALID_ARGUMENT`...);
- `/tensorflow/serving/request_latency` {model_name, API, entrypoint, status}: a histogram in
  microseconds, buckets 10 * 1.8^i (i < 33), `API` Predict/Classify/Regress, `entrypoint`
  GRPC or REST.

The double keeps both in a `prometheus_client.CollectorRegistry` of its own per server.
prometheus_client accepts the names (a leading `:` is legal) but, following OpenMetrics, writes
a counter's samples with a `_total` suffix: the request counter reads
`:tensorflow:serving:request_count_total` here where TF Serving writes
`:tensorflow:serving:request_count` (same labels). The histogram's `_bucket`, `_sum` and
`_count` series have TF Serving's names, and `_count` gives the requests per model, API and
status. Metadata and status calls are not counted, as in TF Serving.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
# TF Serving's monitoring::Buckets::Exponential(10, 1.8, 33), in microseconds.
LATENCY_BUCKETS = tuple(10 * 1.8 ** i for i in range(33))
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST


class ServingMetrics:
    """The request counter and latency histogram of one server."""

    def __init__(self) -> None:
        # TF Serving has no `_created` series; they are off for this process's exporters.
        prometheus_client.disable_created_metrics()
        self.registry = CollectorRegistry()
        self._count = Counter(REQUEST_COUNT, "The total number of requests.",
                              ["model_name", "status"], registry=self.registry)
        self._latency = Histogram(
            REQUEST_LATENCY,
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint", "status"], buckets=LATENCY_BUCKETS,
            registry=self.registry)

    def record(self, model_name: str, api: str, entrypoint: str, status: str,
               seconds: float) -> None:
        """Counts one Predict/Classify/Regress request and its wall time.

        Args:
            model_name: `model_spec.name` as the client sent it.
            api: `Predict`, `Classify` or `Regress`.
            entrypoint: `GRPC` or `REST`.
            status: The answer's code name, `OK` on success.
            seconds: Wall time of the request.
        """
        self._count.labels(model_name, status).inc()
        self._latency.labels(model_name, api, entrypoint, status).observe(seconds * 1e6)

    def exposition(self) -> bytes:
        """The text exposition format (what Prometheus scrapes)."""
        return prometheus_client.generate_latest(self.registry)
