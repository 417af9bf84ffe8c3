"""Parses Tidings read responses with the official CloudEvents Python SDK.

Reads one JSON document from stdin: {"single": {"headers": {...}, "body": "..."},
"batch": {"headers": {...}, "body": "..."}}: the answers of GET /streams/{s}/{r} with
Accept: application/cloudevents+json and of GET /streams/{s} with
Accept: application/cloudevents-batch+json. Prints one JSON per parsed event:
{"sdk": ..., "how": ..., "attributes": {...}, "data": ...}.
The Rust test `python_sdk` checks what the SDK saw."""
import json
import sys

doc = json.load(sys.stdin)
out = []


def emit(sdk, how, attributes, data):
    attributes = {k: (v.isoformat() if hasattr(v, "isoformat") else v)
                  for k, v in attributes.items()}
    out.append({"sdk": sdk, "how": how, "attributes": attributes, "data": data})


# The classic API: cloudevents.http (1.x) or its home under cloudevents.v1 (2.x).
try:
    from cloudevents.http import from_http, from_json
except ImportError:
    from cloudevents.v1.http import from_http, from_json

single = doc["single"]
event = from_http(single["headers"], single["body"])
emit("classic", "from_http", event.get_attributes(), event.get_data())
batch = doc["batch"]
assert "cloudevents-batch+json" in batch["headers"]["content-type"], batch["headers"]
for element in json.loads(batch["body"]):
    event = from_json(json.dumps(element))
    emit("classic", "from_json", event.get_attributes(), event.get_data())

# The 2.x core API, when present.
try:
    from cloudevents.core.bindings import http as core_http
    from cloudevents.core.formats.json import JSONFormat
except ImportError:
    core_http = None
if core_http is not None:
    message = core_http.HTTPMessage(headers=single["headers"], body=single["body"].encode())
    event = core_http.from_http(message, JSONFormat())
    emit("core", "from_http", event.get_attributes(), event.get_data())
    for element in json.loads(batch["body"]):
        event = JSONFormat().read(None, json.dumps(element).encode())
        emit("core", "read", event.get_attributes(), event.get_data())

for line in out:
    print(json.dumps(line))
sys.stdout.flush()
