"""A small hoard serve client for game servers in Python: standard library only (urllib).

It registers a holder (one per game-server process), renews its lease, starts, saves and ends
sessions, and sends trades, receipts and messages. Every value-moving call takes an idempotency
key: retrying it after a timeout returns the first answer and never applies twice.
"""

import json
import urllib.error
import urllib.request
import uuid


class HoardError(Exception):
    """An error answer: `status` (HTTP), `code` (stable, e.g. "fenced_out") and `message`."""

    def __init__(self, status, code, message):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Hoard:
    def __init__(self, url, api_key, timeout_s=30):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s

    def call(self, method, path, body=None, idempotency_key=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", "Bearer " + self.api_key)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if idempotency_key:
            request.add_header("Idempotency-Key", idempotency_key)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            try:
                answer = json.loads(error.read())
            except ValueError:
                answer = {"error": "http", "message": str(error)}
            raise HoardError(error.code, answer.get("error"), answer.get("message")) from None

    # Holders: one per game-server process; renew every `renew_every_ms`.
    def register_holder(self, label=""):
        return self.call("POST", "/v1/holders", {"label": label})

    def renew_holder(self, holder):
        return self.call("POST", f"/v1/holders/{holder}/renew", {})

    def poll_handoffs(self, holder):
        return self.call("GET", f"/v1/holders/{holder}/events?poll=1")["requests"]

    # Sessions: the token fences every write; a 409 fenced_out means another server has the player.
    def start(self, store, key, holder, policy="wait_then_steal", wait_ms=5000):
        body = {"store": store, "key": key, "holder": holder, "policy": policy, "wait_ms": wait_ms}
        return self.call("POST", "/v1/sessions/start", body)

    def save(self, token, value, ack_inbox_through=None):
        return self.call("POST", "/v1/sessions/save", {"token": token, "value": value, "ack_inbox_through": ack_inbox_through})

    def end(self, token, value=None):
        return self.call("POST", "/v1/sessions/end", {"token": token, "value": value})

    # Value-moving calls: pass the same idempotency key when retrying.
    def trade(self, trade_id, tokens, legs, holdings_path="", idempotency_key=None):
        body = {"trade_id": trade_id, "parties": tokens, "legs": legs, "holdings_path": holdings_path}
        return self.call("POST", "/v1/trades", body, idempotency_key or str(uuid.uuid4()))

    def receipt(self, token, purchase_id, payload, grant, idempotency_key=None):
        body = {"token": token, "purchase_id": purchase_id, "payload": payload, "grant": grant}
        return self.call("POST", "/v1/receipts", body, idempotency_key or str(uuid.uuid4()))

    def send_message(self, store, key, message, idempotency_key=None):
        return self.call("POST", f"/v1/stores/{store}/keys/{key}/messages", {"body": message}, idempotency_key or str(uuid.uuid4()))

    def read(self, store, key):
        return self.call("GET", f"/v1/stores/{store}/keys/{key}")
