"""Prints HTTP requests made by the official CloudEvents Python SDK, one JSON per line:
{"sdk": ..., "mode": "structured" or "binary", "headers": {...}, "body": "..."}.
The Rust test `python_sdk` posts each one to a real Tidings server."""
import json
import sys

out = []


def emit(sdk, mode, headers, body):
    if isinstance(body, str):
        body = body.encode()
    out.append({"sdk": sdk, "mode": mode, "headers": dict(headers),
                "body": body.decode("utf-8")})


ATTRS = {
    "type": "OrderCreated",
    "source": "/order-service",
    "id": "py-{}",
    "correlationid": "corr-py",
    "causationid": "user-action-1",
    "userid": "user-789",
    "eventversion": "2.0",
}
DATA = {"orderId": "order-123", "totalAmount": 59.98, "note": "caf\u00e9 & \"quotes\""}

# The classic API: cloudevents.http (1.x) or its home under cloudevents.v1 (2.x).
try:
    from cloudevents.http import CloudEvent
    from cloudevents.conversion import to_binary, to_structured
except ImportError:
    from cloudevents.v1.http import CloudEvent
    from cloudevents.v1.conversion import to_binary, to_structured

for mode, convert in (("structured", to_structured), ("binary", to_binary)):
    attrs = dict(ATTRS, id=ATTRS["id"].format("classic-" + mode))
    headers, body = convert(CloudEvent(attrs, DATA))
    emit("classic", mode, headers, body)

# The 2.x core API, when present.
try:
    from cloudevents.core.bindings import http as core_http
    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent as CoreEvent
except ImportError:
    CoreEvent = None
if CoreEvent is not None:
    for mode, convert in (("structured", core_http.to_structured), ("binary", core_http.to_binary)):
        attrs = dict(ATTRS, id=ATTRS["id"].format("core-" + mode), specversion="1.0",
                     datacontenttype="application/json")
        message = convert(CoreEvent(attributes=attrs, data=DATA), JSONFormat())
        emit("core", mode, message.headers, message.body)

for line in out:
    print(json.dumps(line))
sys.stdout.flush()
