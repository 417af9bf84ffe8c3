"""A consumer-group member in Python, over the Tidings HTTP API, with the standard library.

Usage: group_consumer.py BASE_URL GROUP EXPECTED

Creates GROUP, joins it, long-polls its messages and settles each one: an event whose
data has "poison" is parked with a reason, one with "flaky" is retried on its first
attempt, every other one is acknowledged. Stops once EXPECTED events are acknowledged
and one is parked, leaves, and prints what it did as one JSON object.
"""

import json
import sys
import urllib.error
import urllib.request


class ProblemError(Exception):
    """An RFC 9457 problem answered by the server."""

    def __init__(self, status, problem):
        super().__init__(f"{status} {problem.get('type')}: {problem.get('detail')}")
        self.status = status
        self.problem = problem


class GroupConsumer:
    """One member of a Tidings consumer group: join, fetch, settle, leave."""

    def __init__(self, base_url, group, name="python", token=None):
        self.base = base_url.rstrip("/")
        self.group = group
        self.name = name
        self.token = token
        self.member = None

    def _call(self, method, path, body=None, timeout=75):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", "Bearer " + self.token)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            raise ProblemError(e.code, json.loads(raw) if raw else {}) from None

    def _member_path(self):
        return f"/groups/{self.group}/members/{self.member}"

    def create(self, settings=None):
        """Creates the group; an existing one is left as it is."""
        try:
            return self._call("POST", "/groups", {"name": self.group, "settings": settings or {}})
        except ProblemError as e:
            if e.status != 409:
                raise
            return None

    def join(self):
        lease = self._call("POST", f"/groups/{self.group}/members", {"name": self.name})
        self.member = lease["member"]
        return lease

    def fetch(self, max_messages=16, wait_ms=10000):
        """Up to max_messages, waiting up to wait_ms for the first."""
        answer = self._call("GET", f"{self._member_path()}/messages?max={max_messages}&waitMs={wait_ms}")
        return answer["messages"]

    def settle(self, settlements):
        """settlements: [{"id": …, "action": "ack"|"retry"|"park"|"skip", "reason": …}]."""
        return self._call("POST", f"{self._member_path()}/settle", {"settlements": settlements})

    def ack(self, message):
        self._call("POST", f"{self._member_path()}/messages/{message['id']}/ack")

    def retry(self, message, reason):
        self._call("POST", f"{self._member_path()}/messages/{message['id']}/retry", {"reason": reason})

    def park(self, message, reason):
        self._call("POST", f"{self._member_path()}/messages/{message['id']}/park", {"reason": reason})

    def heartbeat(self):
        self._call("POST", f"{self._member_path()}/heartbeat")

    def leave(self):
        if self.member is not None:
            self._call("DELETE", self._member_path())
            self.member = None


def main():
    base, group, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
    consumer = GroupConsumer(base, group, name="python-worker")
    consumer.create({"retryBaseMs": 10, "retryCapMs": 50})
    consumer.join()
    acked, retried, parked = [], [], []
    try:
        for _ in range(200):
            if len(acked) >= expected and parked:
                break
            batch = []
            for message in consumer.fetch(max_messages=4, wait_ms=2000):
                data = message["event"]["data"]
                position = message["event"]["position"]
                if data.get("poison"):
                    consumer.park(message, "poison: cannot charge a negative amount")
                    parked.append(position)
                elif data.get("flaky") and message["attempt"] == 1:
                    consumer.retry(message, "payment gateway timed out")
                    retried.append(position)
                else:
                    batch.append({"id": message["id"], "action": "ack"})
                    acked.append({"position": position, "attempt": message["attempt"]})
            if batch:
                report = consumer.settle(batch)
                if report["stale"]:
                    raise RuntimeError(f"stale settlements: {report}")
    finally:
        consumer.leave()
    print(json.dumps({"acked": acked, "retried": retried, "parked": parked}))


if __name__ == "__main__":
    main()
