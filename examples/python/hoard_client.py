"""A small hoard serve client for game servers in Python: standard library only (urllib).

It registers a holder (one per game-server process), renews its lease, starts, saves and ends
sessions, and sends trades, receipts and messages, keeping the client rules of hoard's README:

- every session write is based on a version (`base_version`), the one of the last answer adopted;
- every answer that carries a value is adopted: the game's changes made since the request was
  sent are rebased onto it (numbers by their difference, everything else by its new value);
- one request per key at a time (this client is synchronous, so one call is one queue);
- a request whose answer was lost is retried unchanged (same body, ids and Idempotency-Key),
  never rebuilt, so the server can recognise it as a retry;
- a trade or purchase redelivered from new sessions (the game server restarted after a crash)
  keeps its trade or purchase id, which decides, under a new default Idempotency-Key
  (`request_key`), since its body differs.
"""

import copy
import hashlib
import http.client
import json
import time
import urllib.error
import urllib.request
import uuid

# Attempts of one request when the server or the network fails on the way (bounded, backing off).
REQUEST_ATTEMPTS_MAX = 4
# First backoff between attempts; doubles each time.
RETRY_BACKOFF_S = 0.2
# Times a session write adopts a `stale` answer and writes again before giving up.
STALE_ADOPTIONS_MAX = 4


class HoardError(Exception):
    """An error answer: `status` (HTTP), `code` (stable, e.g. "fenced_out"), `message`, `body`."""

    def __init__(self, status, code, message, body=None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.body = status, code, message, body or {}


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def rebase(new, sent, now):
    """The game's changes from `sent` to `now`, applied onto `new` (the value an answer carries).

    Numbers move by their difference (a +5 the game made in flight stays +5 on top of a trade's
    -30); objects merge key by key; anything else the game changed takes the game's value.
    """
    if now == sent:
        return copy.deepcopy(new)
    if _is_number(sent) and _is_number(now) and _is_number(new):
        return new + (now - sent)
    if isinstance(sent, dict) and isinstance(now, dict) and isinstance(new, dict):
        merged = copy.deepcopy(new)
        for key in set(sent) | set(now):
            if key not in now:
                merged.pop(key, None)
            elif key not in sent:
                merged[key] = copy.deepcopy(now[key])
            elif key in new:
                merged[key] = rebase(new[key], sent[key], now[key])
            elif now[key] != sent[key]:
                merged[key] = copy.deepcopy(now[key])
        return merged
    return copy.deepcopy(now)


def request_key(kind, operation_id, sessions):
    """The default Idempotency-Key of a trade or receipt: one per operation id *and* sessions.

    Retries from the same sessions send the same body, so they share the key and the server
    answers them as the first. A redelivery from new sessions (this game server restarted after a
    crash, or the player moved) sends another body, so it needs another key: the trade or
    purchase id then decides (`already_committed`, `already_granted`), where reusing the key
    would be refused as `idempotency_key_reused`.
    """
    tokens = json.dumps([s.token for s in sessions], sort_keys=True)
    digest = hashlib.sha256(f"{operation_id}\n{tokens}".encode()).hexdigest()[:40]
    return f"{kind}-{digest}"


class Hoard:
    def __init__(self, url, api_key, timeout_s=30):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s

    def _call_once(self, method, path, data, idempotency_key):
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
            raise HoardError(error.code, answer.get("error"), answer.get("message"), answer) from None

    def call(self, method, path, body=None, idempotency_key=None):
        """One request, retried unchanged (bounded, with backoff) when it may not have arrived or
        its answer was lost: the same bytes and key, so the server answers a retry as the first."""
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(REQUEST_ATTEMPTS_MAX):
            try:
                return self._call_once(method, path, data, idempotency_key)
            except HoardError as error:
                transient = error.status in (408, 429, 503)
                if not transient or attempt == REQUEST_ATTEMPTS_MAX - 1:
                    raise
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException):
                # Refused, reset, or cut mid-answer (a server killed under the request): the
                # outcome is unknown, so the same request goes again.
                if attempt == REQUEST_ATTEMPTS_MAX - 1:
                    raise
            time.sleep(RETRY_BACKOFF_S * (2 ** attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")

    # Holders: one per game-server process; renew every `renew_every_ms`.
    def register_holder(self, label=""):
        return self.call("POST", "/v1/holders", {"label": label})

    def renew_holder(self, holder):
        return self.call("POST", f"/v1/holders/{holder}/renew", {})

    def poll_handoffs(self, holder):
        return self.call("GET", f"/v1/holders/{holder}/events?poll=1")["requests"]

    def start(self, store, key, holder, policy="wait_then_steal", wait_ms=5000):
        """Starts a session; the game plays on `session.data`."""
        body = {"store": store, "key": key, "holder": holder, "policy": policy, "wait_ms": wait_ms}
        return Session(self, self.call("POST", "/v1/sessions/start", body))

    # Value-moving calls: the same ids and idempotency key when retrying.
    def trade(self, trade_id, sessions, legs, holdings_path="", idempotency_key=None):
        """Trades among sessions, applied to their in-memory values ("save, then trade" in one
        commit); every party adopts its new value."""
        sent = [copy.deepcopy(s.data) for s in sessions]
        body = {
            "trade_id": trade_id,
            "parties": [s.token for s in sessions],
            "party_states": [{"value": v, "base_version": s.version} for v, s in zip(sent, sessions)],
            "legs": legs,
            "holdings_path": holdings_path,
        }
        answer = self.call("POST", "/v1/trades", body, idempotency_key or request_key("trade", trade_id, sessions))
        for session, value, party in zip(sessions, sent, answer["parties"]):
            session.adopt(party["value"], party["version"], value)
        return answer

    def send_message(self, store, key, message, idempotency_key=None):
        return self.call("POST", f"/v1/stores/{store}/keys/{key}/messages", {"body": message},
                         idempotency_key or str(uuid.uuid4()))

    def read(self, store, key):
        return self.call("GET", f"/v1/stores/{store}/keys/{key}")


class Session:
    """One player's session. The game changes `data`; `version` is what the stored value was at
    the last answer adopted, and `saved` is that value, so unsaved changes are `data - saved`."""

    def __init__(self, hoard, started):
        self.hoard = hoard
        self.token = started["token"]
        self.version = started["version"]
        self.data = copy.deepcopy(started["value"])
        self.saved = copy.deepcopy(started["value"])
        self.inbox = started["inbox"]

    def adopt(self, value, version, sent):
        """Adopts a value the server answered for a request based on `sent` (keeping whatever
        the game changed since). An answer at the version already adopted changed nothing."""
        if version <= self.version:
            return
        self.data = rebase(value, sent, self.data)
        self.saved, self.version = copy.deepcopy(value), version

    def _adopt_stale(self, error):
        current = error.body["current"]
        self.adopt(current["value"], current["version"], self.saved)

    def _write(self, route, extra):
        for _ in range(STALE_ADOPTIONS_MAX):
            sent = copy.deepcopy(self.data)
            body = {"token": self.token, "base_version": self.version, "value": sent, **extra}
            try:
                answer = self.hoard.call("POST", route, body)
            except HoardError as error:
                if error.code != "stale":
                    raise
                # Something changed the key that this session had not adopted (a lost trade
                # answer, say): rebase the unsaved changes onto it and write again.
                self._adopt_stale(error)
                continue
            self.saved, self.version = sent, answer["version"]
            return answer
        raise HoardError(409, "stale", "the key kept changing under this session")

    def save(self, ack_inbox_through=None):
        return self._write("/v1/sessions/save", {"ack_inbox_through": ack_inbox_through})

    def end(self, ack_inbox_through=None):
        return self._write("/v1/sessions/end", {"ack_inbox_through": ack_inbox_through})

    def receipt(self, purchase_id, payload, grant, idempotency_key=None):
        """Grants a purchase on the in-memory value, exactly once per purchase id."""
        for _ in range(STALE_ADOPTIONS_MAX):
            sent = copy.deepcopy(self.data)
            body = {"token": self.token, "purchase_id": purchase_id, "payload": payload, "grant": grant,
                    "value": sent, "base_version": self.version}
            try:
                key = idempotency_key or request_key("receipt", purchase_id, [self])
                answer = self.hoard.call("POST", "/v1/receipts", body, key)
            except HoardError as error:
                if error.code != "stale":
                    raise
                # A stale attempt wrote nothing (not even its idempotency record): adopt and retry.
                self._adopt_stale(error)
                continue
            party = answer["party"]
            self.adopt(party["value"], party["version"], sent)
            return answer
        raise HoardError(409, "stale", "the key kept changing under this session")
