//! The OpenAPI 3.1 document served at `/openapi.json`.
//!
//! Written by hand next to the routes; a test walks every documented operation against
//! the real router, and every route of the router against the document.

use serde_json::{Value, json};

/// Every operation the router serves: (method, path template).
pub const OPERATIONS: &[(&str, &str)] = &[
    ("get", "/"),
    ("get", "/console/{file}"),
    ("get", "/streams"),
    ("post", "/streams/{stream}"),
    ("get", "/streams/{stream}"),
    ("get", "/streams/{stream}/{revision}"),
    ("get", "/all"),
    ("get", "/correlations/{id}"),
    ("get", "/projections"),
    ("get", "/projections/{name}"),
    ("get", "/subscribe/all"),
    ("get", "/subscribe/streams/{stream}"),
    ("get", "/groups"),
    ("post", "/groups"),
    ("get", "/groups/{group}"),
    ("put", "/groups/{group}"),
    ("delete", "/groups/{group}"),
    ("post", "/groups/{group}/members"),
    ("delete", "/groups/{group}/members/{member}"),
    ("post", "/groups/{group}/members/{member}/heartbeat"),
    ("get", "/groups/{group}/members/{member}/messages"),
    (
        "post",
        "/groups/{group}/members/{member}/messages/{id}/{action}",
    ),
    ("get", "/groups/{group}/members/{member}/stream"),
    ("post", "/groups/{group}/members/{member}/settle"),
    ("get", "/groups/{group}/parked"),
    ("delete", "/groups/{group}/parked"),
    ("post", "/groups/{group}/parked/replay"),
    ("delete", "/groups/{group}/parked/{id}"),
    ("post", "/groups/{group}/parked/{id}/replay"),
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/metrics"),
    ("get", "/stats"),
    ("get", "/openapi.json"),
];

pub(crate) fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
    })
}

pub(crate) fn ok_json(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

pub(crate) fn param(name: &str, location: &str, description: &str, schema: Value) -> Value {
    json!({
        "name": name, "in": location, "required": location == "path",
        "description": description, "schema": schema
    })
}

pub(crate) fn string() -> Value {
    json!({ "type": "string" })
}

pub(crate) fn integer() -> Value {
    json!({ "type": "integer", "minimum": 0 })
}

fn events_page() -> Value {
    json!({
        "type": "object",
        "properties": {
            "events": { "type": "array", "items": { "$ref": "#/components/schemas/RecordedEvent" } },
            "next": { "type": ["integer", "null"], "description": "pass as from to read the next page" }
        }
    })
}

/// What the read routes say about `Accept` (OpenAPI ignores `Accept` header parameters).
const NEGOTIATION: &str = "Content negotiation by Accept (q-values honoured): no Accept, application/json, application/* or */* get the Tidings JSON; application/cloudevents-batch+json gets a JSON array of structured CloudEvents 1.0; application/cloudevents+json gets one structured CloudEvent on GET /streams/{stream}/{revision} and the batch (content type application/cloudevents-batch+json) on the list routes. The recorded stream, revision, position and recording time are the extensions tidingsstream, tidingsrevision, tidingsposition (decimal strings) and tidingsrecordedat (RFC 3339); an append ignores them. A CloudEvents page that is full links to the next one in a Link header (rel=\"next\"). Unparseable Accept entries are ignored; an Accept naming only other types gets 406.";

/// A read route's 200: the Tidings JSON `schema`, or CloudEvents.
fn ok_read(description: &str, schema: Value, one: bool) -> Value {
    let batch = json!({ "schema": { "$ref": "#/components/schemas/CloudEventsBatch" } });
    let mut content = json!({
        "application/json": { "schema": schema },
        "application/cloudevents-batch+json": batch
    });
    if one {
        content["application/cloudevents+json"] =
            json!({ "schema": { "$ref": "#/components/schemas/CloudEvent" } });
    }
    json!({ "description": description, "content": content })
}

fn sse_response() -> Value {
    json!({
        "description": "Server-Sent Events: one message per event, id = global position, data = RecordedEvent JSON (or one structured CloudEvent with format=cloudevents); `: heartbeat` comments when idle",
        "content": { "text/event-stream": { "schema": { "type": "string" } } }
    })
}

/// The Problem schema: RFC 9457 members, `type` enumerating every problem type the
/// server answers with, and `x-problem-types` giving each one's status, whether it
/// carries `Retry-After`, and its meaning (from [`crate::problem::PROBLEM_TYPES`]).
fn problem_schema() -> Value {
    let types = crate::problem::PROBLEM_TYPES;
    let uris: Vec<String> = types.iter().map(|t| t.type_uri()).collect();
    let listed: Vec<Value> = types
        .iter()
        .map(|t| {
            json!({
                "type": t.type_uri(),
                "slug": t.slug,
                "status": t.status,
                "retryAfter": t.retry_after,
                "meaning": t.meaning,
            })
        })
        .collect();
    json!({
        "type": "object",
        "description": "RFC 9457 problem details, plus members carrying the values needed to fix the request. `type` is one of `x-problem-types`; those marked `retryAfter` carry a Retry-After header.",
        "properties": {
            "type": { "type": "string", "enum": uris },
            "title": string(),
            "status": { "type": "integer" },
            "detail": string()
        },
        "required": ["type", "title", "status", "detail"],
        "x-problem-types": listed
    })
}

/// The document.
pub fn document() -> Value {
    let mut doc = base_document();
    if let (Some(Value::Object(paths)), Value::Object(more)) =
        (doc.get_mut("paths"), crate::groups_openapi::paths())
    {
        paths.extend(more);
    }
    if let (Some(Value::Object(schemas)), Value::Object(more)) = (
        doc.pointer_mut("/components/schemas"),
        crate::groups_openapi::schemas(),
    ) {
        schemas.extend(more);
    }
    doc
}

fn base_document() -> Value {
    let stream = param("stream", "path", "stream name", string());
    let from = param(
        "from",
        "query",
        "first revision or position (inclusive)",
        integer(),
    );
    let limit = param(
        "limit",
        "query",
        "page size (default 100, at most 10000)",
        json!({"type": "integer", "minimum": 1, "maximum": 10000}),
    );
    let event_type = param(
        "type",
        "query",
        "only these event types (comma-separated)",
        string(),
    );
    let prefix = param(
        "streamPrefix",
        "query",
        "only streams starting with this",
        string(),
    );
    let category = param(
        "category",
        "query",
        "only streams of these categories (comma-separated; a stream's category is its name up to the first `-`)",
        string(),
    );
    let last_event_id = param(
        "Last-Event-ID",
        "header",
        "resume after this global position",
        integer(),
    );
    let sse_format = param(
        "format",
        "query",
        "data of each message: json (the RecordedEvent, default) or cloudevents (one structured CloudEvent 1.0 with the tidingsstream, tidingsrevision, tidingsposition and tidingsrecordedat extensions); a query parameter because EventSource cannot set headers",
        json!({ "enum": ["json", "cloudevents"], "default": "json" }),
    );
    let problem_406 = problem(
        "Accept names none of application/json, application/cloudevents+json, application/cloudevents-batch+json",
    );
    let problem_400 = problem("malformed request: bad JSON, bad stream name, bad header or query");
    let problem_401 = problem("a bearer token is required or unknown");
    let problem_403 = problem("the token's role does not cover this route");
    let envelope = json!({ "$ref": "#/components/schemas/NewEvent" });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Tidings",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Event store HTTP API: appends with optimistic concurrency, reads, Server-Sent Events subscriptions, CloudEvents 1.0 in all three HTTP content modes, and consumer groups whose members may be written in any language."
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Problem": problem_schema(),
                "Metadata": {
                    "type": "object",
                    "properties": { "correlationId": string(), "causationId": string(), "userId": string() },
                    "additionalProperties": { "type": "string" }
                },
                "NewEvent": {
                    "type": "object",
                    "required": ["eventType", "data"],
                    "properties": {
                        "eventId": { "type": "string", "format": "uuid" },
                        "eventType": string(),
                        "eventVersion": string(),
                        "timestamp": { "type": "string", "format": "date-time" },
                        "source": string(),
                        "data": {},
                        "metadata": { "$ref": "#/components/schemas/Metadata" }
                    }
                },
                "RecordedEvent": {
                    "type": "object",
                    "properties": {
                        "eventId": { "type": "string", "format": "uuid" },
                        "eventType": string(), "eventVersion": string(),
                        "timestamp": { "type": "string", "format": "date-time" },
                        "source": string(), "data": {},
                        "metadata": { "$ref": "#/components/schemas/Metadata" },
                        "stream": string(), "revision": integer(), "position": integer(),
                        "recordedAt": { "type": "string", "format": "date-time" }
                    }
                },
                "CloudEvent": {
                    "type": "object",
                    "description": "A recorded event as a structured CloudEvent 1.0 (tidings::event::cloudevents); other metadata travels as further string extensions",
                    "required": ["specversion", "id", "source", "type"],
                    "properties": {
                        "specversion": { "const": "1.0" }, "id": string(), "source": string(), "type": string(),
                        "time": { "type": "string", "format": "date-time" },
                        "datacontenttype": { "const": "application/json" }, "data": {},
                        "eventversion": string(), "correlationid": string(), "causationid": string(), "userid": string(),
                        "tidingsstream": { "type": "string", "description": "the stream it was recorded in (ignored on append)" },
                        "tidingsrevision": { "type": "string", "description": "its revision, decimal (ignored on append)" },
                        "tidingsposition": { "type": "string", "description": "its global position, decimal (ignored on append)" },
                        "tidingsrecordedat": { "type": "string", "format": "date-time", "description": "when the store committed it (ignored on append)" }
                    },
                    "additionalProperties": { "type": "string" }
                },
                "CloudEventsBatch": {
                    "type": "array",
                    "description": "CloudEvents 1.0 batched mode",
                    "items": { "$ref": "#/components/schemas/CloudEvent" }
                },
                "StreamInfo": {
                    "type": "object",
                    "properties": {
                        "stream": string(), "lastRevision": integer(), "lastPosition": integer(),
                        "lastWritten": { "type": "string", "format": "date-time" }
                    }
                },
                "AppendResult": {
                    "type": "object",
                    "properties": {
                        "stream": string(), "firstRevision": integer(), "nextExpectedVersion": integer(),
                        "firstPosition": integer(), "position": integer(), "count": integer()
                    }
                }
            }
        },
        "security": [{}, { "bearer": [] }],
        "paths": {
            "/": { "get": { "summary": "The web console", "responses": { "200": { "description": "HTML", "content": { "text/html": {} } } } } },
            "/console/{file}": { "get": {
                "summary": "The console's static files",
                "parameters": [param("file", "path", "file name", string())],
                "responses": { "200": { "description": "the file" }, "404": problem("no such file") }
            } },
            "/streams": { "get": {
                "summary": "List streams in name order",
                "parameters": [
                    param("prefix", "query", "only names starting with this", string()),
                    param("after", "query", "only names after this one (paging)", string()),
                    limit.clone()
                ],
                "responses": {
                    "200": ok_json("streams", json!({ "type": "object", "properties": {
                        "streams": { "type": "array", "items": { "$ref": "#/components/schemas/StreamInfo" } },
                        "next": { "type": ["string", "null"], "description": "pass as after for the next page" } } })),
                    "400": problem_400.clone(), "401": problem_401.clone(), "403": problem_403.clone()
                }
            } },
            "/streams/{stream}": {
                "post": {
                    "summary": "Append one event or an array of events (Tidings envelope or CloudEvents)",
                    "parameters": [stream.clone(), param("Expected-Version", "header", "any, no-stream, stream-exists or a revision", string())],
                    "requestBody": { "required": true, "content": {
                        "application/json": { "schema": { "oneOf": [envelope.clone(), { "type": "array", "items": envelope }] } },
                        "application/cloudevents+json": { "schema": { "type": "object", "description": "CloudEvents 1.0 structured mode" } },
                        "application/cloudevents-batch+json": { "schema": { "type": "array", "description": "CloudEvents 1.0 batched mode" } },
                        "*/*": { "schema": {}, "description": "CloudEvents 1.0 binary mode: attributes in ce-* headers" }
                    } },
                    "responses": {
                        "201": ok_json("appended", json!({ "$ref": "#/components/schemas/AppendResult" })),
                        "400": problem_400.clone(), "401": problem_401.clone(), "403": problem_403.clone(),
                        "409": problem("wrong expected version (members expected, actual) or conflicting event id"),
                        "413": problem("body or append too large (member limit)"),
                        "415": problem("unsupported Content-Type"),
                        "422": problem("an event is refused (member index)"),
                        "503": problem("append queue full or shutting down; see Retry-After")
                    }
                },
                "get": {
                    "summary": "Read a stream",
                    "description": NEGOTIATION,
                    "parameters": [stream.clone(), from.clone(), limit.clone(),
                        param("direction", "query", "forward or backward", json!({ "enum": ["forward", "backward"] }))],
                    "responses": {
                        "200": ok_read("a page of events", events_page(), false),
                        "400": problem_400.clone(), "401": problem_401.clone(), "403": problem_403.clone(),
                        "404": problem("the stream has no events"), "406": problem_406.clone()
                    }
                }
            },
            "/streams/{stream}/{revision}": { "get": {
                "summary": "One event",
                "description": NEGOTIATION,
                "parameters": [stream.clone(), param("revision", "path", "revision in the stream", integer())],
                "responses": {
                    "200": ok_read("the event (a one-element array for application/cloudevents-batch+json)", json!({ "$ref": "#/components/schemas/RecordedEvent" }), true),
                    "400": problem_400.clone(), "401": problem_401.clone(), "403": problem_403.clone(),
                    "404": problem("no event at that revision"), "406": problem_406.clone()
                }
            } },
            "/all": { "get": {
                "summary": "Read the global log by position",
                "description": NEGOTIATION,
                "parameters": [from.clone(), limit.clone(), event_type.clone(), prefix.clone(), category.clone()],
                "responses": {
                    "200": ok_read("a page of events", events_page(), false),
                    "400": problem_400.clone(), "401": problem_401.clone(), "403": problem_403.clone(),
                    "406": problem_406.clone()
                }
            } },
            "/correlations/{id}": { "get": {
                "summary": "Every event of one business transaction, in commit order, with causationId links",
                "description": NEGOTIATION,
                "parameters": [param("id", "path", "correlation id", string()), from.clone(), limit.clone()],
                "responses": {
                    "200": ok_read("the events", events_page(), false),
                    "400": problem_400.clone(), "401": problem_401.clone(), "403": problem_403.clone(),
                    "404": problem("no event carries this correlation id"), "406": problem_406
                }
            } },
            "/subscribe/all": { "get": {
                "summary": "Live subscription to the global log",
                "parameters": [from.clone(), event_type.clone(), prefix, category, last_event_id.clone(), sse_format.clone()],
                "responses": { "200": sse_response(), "400": problem_400.clone(), "401": problem_401.clone(), "403": problem_403.clone() }
            } },
            "/subscribe/streams/{stream}": { "get": {
                "summary": "Live subscription to one stream (from is a revision)",
                "parameters": [stream, from, event_type, last_event_id, sse_format],
                "responses": { "200": sse_response(), "400": problem_400, "401": problem_401.clone(), "403": problem_403.clone() }
            } },
            "/projections": { "get": {
                "summary": "The built-in read models (event-types, categories): live version and position",
                "responses": { "200": ok_json("read models", json!({ "type": "object" })), "401": problem_401.clone(), "403": problem_403.clone() }
            } },
            "/projections/{name}": { "get": {
                "summary": "One built-in read model, whole, from its live version",
                "parameters": [param("name", "path", "event-types or categories", string())],
                "responses": { "200": ok_json("the read model", json!({ "type": "object" })), "404": problem("no such projection"),
                    "401": problem_401.clone(), "403": problem_403.clone() }
            } },
            "/health": { "get": { "summary": "Liveness", "responses": { "200": ok_json("alive", json!({ "type": "object" })) } } },
            "/ready": { "get": { "summary": "Readiness", "responses": {
                "200": ok_json("ready", json!({ "type": "object" })), "503": problem("shutting down or store unavailable") } } },
            "/metrics": { "get": { "summary": "Prometheus metrics (admin token when tokens are on)", "responses": {
                "200": { "description": "Prometheus text format 0.0.4, or OpenMetrics 1.0.0 when the Accept header asks for it", "content": { "text/plain": {}, "application/openmetrics-text": {} } },
                "401": problem_401.clone(), "403": problem_403.clone() } } },
            "/stats": { "get": { "summary": "Head, size and counters for the console", "responses": {
                "200": ok_json("stats", json!({ "type": "object" })), "401": problem_401, "403": problem_403 } } },
            "/openapi.json": { "get": { "summary": "This document", "responses": { "200": ok_json("OpenAPI 3.1", json!({ "type": "object" })) } } }
        }
    })
}
