//! The consumer-group routes and schemas of the OpenAPI document (merged into it by
//! [`crate::openapi::document`]).

use serde_json::{Value, json};

use crate::openapi::{integer, ok_json, param, problem, string};

fn schema(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn no_content(description: &str) -> Value {
    json!({ "description": description })
}

fn body(schema: Value, required: bool) -> Value {
    json!({ "required": required, "content": { "application/json": { "schema": schema } } })
}

/// The schemas of groups, members, messages and parked messages.
pub(crate) fn schemas() -> Value {
    let ms = |d: &str| json!({ "type": "integer", "minimum": 0, "description": d });
    json!({
        "GroupSettings": {
            "type": "object",
            "description": "A consumer group's settings; every field is optional (defaults shown) and unknown fields are refused",
            "additionalProperties": false,
            "properties": {
                "strategy": { "enum": ["pinned", "round-robin"], "default": "pinned",
                    "description": "pinned: one member at a time per stream, per-stream order; round-robin: any ready message to the next member" },
                "start": { "description": "where a new group starts (fixed at creation)", "default": "beginning",
                    "oneOf": [{ "enum": ["beginning", "end"] },
                              { "type": "object", "required": ["position"], "properties": { "position": integer() } }] },
                "filter": { "type": "object", "properties": {
                    "eventTypes": { "type": "array", "items": string() },
                    "streamPrefix": { "type": ["string", "null"] },
                    "categories": { "type": "array", "items": string(),
                        "description": "only streams of these categories (the name up to its first `-`)" } } },
                "leaseMs": ms("a member's lease without a heartbeat (default 10000; 100 to 3600000)"),
                "messageTimeoutMs": ms("how long a member may hold a message (default 30000; 100 to 86400000)"),
                "maxRetries": { "type": "integer", "minimum": 0, "maximum": 1000, "default": 10 },
                "retryBaseMs": ms("first retry's backoff, doubled each time (default 100)"),
                "retryCapMs": ms("longest backoff (default 30000; at most 3600000)"),
                "buffer": { "type": "integer", "minimum": 1, "maximum": 65536, "default": 256 },
                "sequencedParking": { "type": "boolean", "default": false,
                    "description": "park the later events of a stream behind a parked one (pinned only)" }
            }
        },
        "GroupInfo": {
            "type": "object",
            "properties": { "name": string(), "settings": schema("GroupSettings") }
        },
        "MemberInfo": {
            "type": "object",
            "properties": {
                "member": string(), "name": string(), "inFlight": integer(),
                "leaseLeftMs": integer()
            }
        },
        "GroupDescription": {
            "type": "object",
            "properties": {
                "name": string(), "settings": schema("GroupSettings"),
                "checkpoint": { "type": "integer", "minimum": 0, "description": "every event before this position is settled" },
                "head": { "type": "integer", "minimum": 0, "description": "the log's next position" },
                "lag": { "type": "integer", "minimum": 0, "description": "positions between checkpoint and head" },
                "members": { "type": "array", "items": schema("MemberInfo") },
                "inFlight": integer(), "parked": integer()
            }
        },
        "MemberLease": {
            "type": "object",
            "properties": {
                "group": string(),
                "member": { "type": "string", "description": "the member's id: use it in the member routes" },
                "leaseMs": { "type": "integer", "description": "how long the lease lasts without a fetch, settlement or heartbeat" }
            }
        },
        "GroupMessage": {
            "type": "object",
            "properties": {
                "id": { "type": "integer", "minimum": 0, "description": "the delivery id to settle it by" },
                "attempt": { "type": "integer", "minimum": 1 },
                "replay": { "type": "boolean", "description": "a replay of a parked message" },
                "event": schema("RecordedEvent")
            }
        },
        "Settlement": {
            "type": "object",
            "required": ["id", "action"],
            "properties": {
                "id": integer(),
                "action": { "enum": ["ack", "retry", "park", "skip"] },
                "reason": { "type": "string", "description": "required for retry and park" }
            }
        },
        "SettleReport": {
            "type": "object",
            "properties": {
                "settled": integer(),
                "stale": { "type": "array", "items": integer(),
                    "description": "ids the member no longer holds: nothing was done for them" }
            }
        },
        "ParkedMessage": {
            "type": "object",
            "properties": {
                "id": integer(),
                "parkedAt": { "type": "string", "format": "date-time" },
                "reason": string(), "attempts": integer(),
                "held": { "type": "boolean", "description": "parked behind an earlier parked event of its stream without being delivered" },
                "event": schema("RecordedEvent")
            }
        },
        "ParkedSelection": {
            "type": "object",
            "additionalProperties": false,
            "description": "ids names those parked messages; an empty body, {} or null ids names them all",
            "properties": { "ids": { "type": ["array", "null"], "items": integer() } }
        }
    })
}

/// The consumer-group paths.
pub(crate) fn paths() -> Value {
    let group = param("group", "path", "group name", string());
    let member = param("member", "path", "member id (from the join)", string());
    let p400 =
        problem("malformed request: bad JSON (member field names it), bad name, settings or query");
    let p401 = problem("a bearer token is required or unknown");
    let p403 = problem("the token's role does not cover this route");
    let p404 = problem("no such group (or parked message)");
    let p410 = problem(
        "the member's lease lapsed or it left: join again (type urn:tidings:problem:lease-expired)",
    );
    let p501 = problem("this server hosts no consumer groups");
    let p503 = problem("the group store or backend failed; see Retry-After");
    let admin = "Needs an admin token when tokens are on.";
    let consumer = "Needs a read-only token when tokens are on (consuming is reading).";
    let errors = |extra: &[(&str, &Value)]| {
        let mut r = json!({
            "400": p400, "401": p401, "403": p403, "404": p404, "501": p501, "503": p503
        });
        for (status, value) in extra {
            r[*status] = (*value).clone();
        }
        r
    };
    let with = |mut responses: Value, status: &str, value: Value| {
        responses[status] = value;
        responses
    };
    let selection = body(schema("ParkedSelection"), false);
    json!({
        "/groups": {
            "get": {
                "summary": "List consumer groups",
                "description": consumer,
                "responses": with(errors(&[]), "200", ok_json("the groups", json!({ "type": "object",
                    "properties": { "groups": { "type": "array", "items": schema("GroupInfo") } } })))
            },
            "post": {
                "summary": "Create a consumer group",
                "description": format!("{admin} Answers 201 with Location /groups/{{group}}."),
                "requestBody": body(json!({ "type": "object", "required": ["name"], "additionalProperties": false,
                    "properties": { "name": { "type": "string", "description": "1 to 100 of ASCII letters, digits, '.', '_', '-', starting with a letter or digit" },
                        "settings": schema("GroupSettings") } }), true),
                "responses": with(errors(&[("409", &problem("a group of that name exists (group-exists)"))]),
                    "201", ok_json("created", schema("GroupInfo")))
            }
        },
        "/groups/{group}": {
            "get": {
                "summary": "A group's state: checkpoint, head, lag, members, in flight, parked",
                "description": consumer,
                "parameters": [group],
                "responses": with(errors(&[]), "200", ok_json("the group", schema("GroupDescription")))
            },
            "put": {
                "summary": "Change a group's settings",
                "description": format!("{admin} The fields the body names replace the current ones; the others keep their values. The start position may not change."),
                "parameters": [group],
                "requestBody": body(schema("GroupSettings"), true),
                "responses": with(errors(&[("409", &problem("another process changed the group first"))]),
                    "200", ok_json("the new settings", schema("GroupInfo")))
            },
            "delete": {
                "summary": "Delete a group with its settled state and parked list",
                "description": admin,
                "parameters": [group],
                "responses": with(errors(&[]), "204", no_content("deleted"))
            }
        },
        "/groups/{group}/members": { "post": {
            "summary": "Join a group as a new member",
            "description": format!("{consumer} The lease lasts the group's leaseMs from the member's last join, heartbeat, fetch or settlement. Answers 201 with Location /groups/{{group}}/members/{{member}}."),
            "parameters": [group],
            "requestBody": body(json!({ "type": "object", "additionalProperties": false,
                "properties": { "name": { "type": "string", "description": "a name for people reading the group (default http)" } } }), false),
            "responses": with(errors(&[]), "201", ok_json("the member's lease", schema("MemberLease")))
        } },
        "/groups/{group}/members/{member}": { "delete": {
            "summary": "Leave: the member's messages go to others at once",
            "description": format!("{consumer} Leaving twice is not an error."),
            "parameters": [group, member],
            "responses": with(errors(&[]), "204", no_content("left"))
        } },
        "/groups/{group}/members/{member}/heartbeat": { "post": {
            "summary": "Keep the member's lease alive",
            "description": consumer,
            "parameters": [group, member],
            "responses": with(errors(&[("410", &p410)]), "204", no_content("renewed"))
        } },
        "/groups/{group}/members/{member}/messages": { "get": {
            "summary": "Long-poll for messages: up to max, waiting up to waitMs for the first",
            "description": format!("{consumer} Renews the lease. An empty list when none came in time. Accept: application/cloudevents-batch+json answers a batch of structured CloudEvents carrying the delivery id, attempt and replay flag in the tidingsdeliveryid, tidingsattempt and tidingsreplay extensions."),
            "parameters": [group, member,
                param("max", "query", "most messages (default 16, 1 to 1000)", json!({ "type": "integer", "minimum": 1, "maximum": 1000, "default": 16 })),
                param("waitMs", "query", "longest wait for the first message (default 10000, cut to 60000)", json!({ "type": "integer", "minimum": 0, "default": 10000 }))],
            "responses": with(errors(&[("410", &p410), ("406", &problem("Accept names neither JSON nor a CloudEvents batch"))]), "200", json!({
                "description": "the messages",
                "content": {
                    "application/json": { "schema": { "type": "object", "properties": {
                        "messages": { "type": "array", "items": schema("GroupMessage") } } } },
                    "application/cloudevents-batch+json": { "schema": schema("CloudEventsBatch") }
                }
            }))
        } },
        "/groups/{group}/members/{member}/messages/{id}/{action}": { "post": {
            "summary": "Settle one message: ack, retry, park or skip",
            "description": format!("{consumer} retry and park take an optional {{\"reason\"}} body."),
            "parameters": [group, member,
                param("id", "path", "delivery id", integer()),
                param("action", "path", "the settlement", json!({ "enum": ["ack", "retry", "park", "skip"] }))],
            "requestBody": body(json!({ "type": "object", "additionalProperties": false, "properties": { "reason": string() } }), false),
            "responses": with(errors(&[("410", &p410), ("409", &problem("the member no longer holds this delivery (stale-delivery): nothing was done"))]),
                "204", no_content("settled"))
        } },
        "/groups/{group}/members/{member}/stream": { "get": {
            "summary": "The member's messages as Server-Sent Events, at most max unsettled at once",
            "description": format!("{consumer} Each message is `event: message`, `id: <delivery id>`, `data: <GroupMessage JSON>`; settle with the settle routes and more follow. The open connection keeps the lease alive; when it closes the member does not leave, its lease lapses (leave with DELETE to hand its messages over at once). `: heartbeat` comments when idle; a failure is an `event: error` with a problem document, which ends the stream."),
            "parameters": [group, member,
                param("max", "query", "most unsettled messages out at once (default 16, 1 to 1000)", json!({ "type": "integer", "minimum": 1, "maximum": 1000, "default": 16 }))],
            "responses": with(errors(&[("410", &p410)]), "200", json!({
                "description": "Server-Sent Events",
                "content": { "text/event-stream": { "schema": { "type": "string" } } }
            }))
        } },
        "/groups/{group}/members/{member}/settle": { "post": {
            "summary": "Settle a batch of messages",
            "description": format!("{consumer} Renews the lease. Ids the member no longer holds are reported as stale and change nothing."),
            "parameters": [group, member],
            "requestBody": body(json!({ "type": "object", "required": ["settlements"], "additionalProperties": false,
                "properties": { "settlements": { "type": "array", "items": schema("Settlement") } } }), true),
            "responses": with(errors(&[("410", &p410)]), "200", ok_json("what was done", schema("SettleReport")))
        } },
        "/groups/{group}/parked": {
            "get": {
                "summary": "Parked messages, oldest first",
                "description": consumer,
                "parameters": [group, param("limit", "query", "most messages (default 100, at most 10000)", json!({ "type": "integer", "minimum": 1, "maximum": 10000 }))],
                "responses": with(errors(&[]), "200", ok_json("the parked messages", json!({ "type": "object",
                    "properties": { "parked": { "type": "array", "items": schema("ParkedMessage") } } })))
            },
            "delete": {
                "summary": "Delete parked messages for good (the ids given, or all)",
                "description": admin,
                "parameters": [group],
                "requestBody": selection,
                "responses": with(errors(&[]), "200", ok_json("how many", json!({ "type": "object", "properties": { "deleted": integer() } })))
            }
        },
        "/groups/{group}/parked/replay": { "post": {
            "summary": "Deliver parked messages again with fresh attempts (the ids given, or all)",
            "description": format!("{admin} A replayed message leaves the parked list once it is acknowledged or skipped."),
            "parameters": [group],
            "requestBody": selection,
            "responses": with(errors(&[]), "200", ok_json("how many were queued", json!({ "type": "object", "properties": { "queued": integer() } })))
        } },
        "/groups/{group}/parked/{id}": { "delete": {
            "summary": "Delete one parked message",
            "description": admin,
            "parameters": [group, param("id", "path", "parked message id", integer())],
            "responses": with(errors(&[]), "204", no_content("deleted"))
        } },
        "/groups/{group}/parked/{id}/replay": { "post": {
            "summary": "Deliver one parked message again",
            "description": admin,
            "parameters": [group, param("id", "path", "parked message id", integer())],
            "responses": with(errors(&[]), "200", ok_json("how many were queued (0 when it is queued already)", json!({ "type": "object", "properties": { "queued": integer() } })))
        } }
    })
}
