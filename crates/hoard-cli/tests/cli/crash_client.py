"""One game-server process of the crash rounds (crates/hoard-cli/tests/cli/crash_rounds.rs).

It plays players of the `players` store through hoard's Python example client
(examples/python/hoard_client.py), keeping the README's client rules: every write based on the
last version adopted, every returned value adopted, one request at a time (so one queue per key),
and a request whose outcome is unknown retried unchanged (same body, trade id, purchase id and
Idempotency-Key) until it answers. It starts sessions (asking, then stealing), plays (xp), saves,
trades items and gold between the players it holds, grants purchases, ends sessions, answers
handoff requests and drops sessions that were stolen or fenced out.

Everything hoard acknowledged is appended to the journal, one JSON line each, fsynced before the
next request, so the audit knows what the server promised even when this process is killed:
- {"t": "attempt", "kind": K}: an operation was sent (the figures count them);
- {"t": "ack", "kind": K, "key", "version", "value", ...}: hoard answered that `key` is at
  `version` with `value` (start, save, end, grant; a trade's ack lists every party);
- {"t": "intent", "purchase_id", "key", "gold"}: a purchase is owed to `key`; a later
  incarnation of this client redelivers it with the same purchase id until it is granted;
- {"t": "anomaly", ...}: an answer an honest client must never get (the test fails on any);
- {"t": "cut", "path", "refused"}: a request refused (no server listening), or reset or cut
  mid-answer (a server killed under it: its outcome unknown);
  {"t": "gave_up"}, {"t": "fenced"}, {"t": "holder_lost"}: sessions this client dropped.

    python3 crash_client.py --urls URL[,URL] --api-key K --client c0 --incarnation 0 \
        --journal FILE --players p0,p1,... --seed N --run-s 60

It stops by itself after --run-s seconds or OPERATIONS_MAX operations (the test kills it first).
"""

import argparse
import http.client
import json
import os
import random
import sys
import time
import urllib.error

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "..", "examples", "python"))
from hoard_client import Hoard, HoardError  # noqa: E402

STORE = "players"
# An operation whose outcome is unknown (server killed, answer lost) is retried unchanged for this
# long; past it the sessions it touched are dropped (their state is unknown), a purchase stays owed.
UNKNOWN_RETRY_DEADLINE_S = 30
# Pause between two retries of an operation whose outcome is unknown.
UNKNOWN_RETRY_PAUSE_S = 0.1
# Sessions this process holds at once.
SESSIONS_HELD_MAX = 3
# How long a start waits for the holder to hand over before stealing.
START_WAIT_MS = 250
# Events (handoff requests, steals) are polled every this many operations.
EVENTS_POLL_EVERY_OPERATIONS = 3
# Gold granted by one purchase.
GRANT_GOLD = 10
# Gold one trade moves at most.
TRADE_GOLD_MAX = 20
# One request's socket timeout.
REQUEST_TIMEOUT_S = 10
# The hard bound on operations of one incarnation.
OPERATIONS_MAX = 100_000

# What a request can die of when the server is killed under it: its outcome is unknown.
UNKNOWN_OUTCOME = (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException, ValueError, OSError)
# Error answers that applied nothing and may pass: retry the same request.
RETRY_CODES = {"store_unavailable", "outcome_unknown", "shutting_down", "not_processed_yet", "contended", "conflict",
               "too_many_connections", "rate_limited", "timeout"}
# Statuses that applied nothing or whose outcome is unknown: retry the same request.
RETRY_STATUSES = (408, 429, 503)


class GaveUp(Exception):
    """An operation's outcome stayed unknown past UNKNOWN_RETRY_DEADLINE_S."""


class HolderLost(Exception):
    """The holder's lease expired or was released: every session of it is over."""


class SpreadHoard(Hoard):
    """The example client over several `hoard serve` processes of one database: each request,
    retries included, goes to one of them at random (as behind a load balancer)."""

    def __init__(self, urls, api_key, rng, journal):
        super().__init__(urls[0], api_key, timeout_s=REQUEST_TIMEOUT_S)
        self.urls = [url.rstrip("/") for url in urls]
        self.rng = rng
        self.journal = journal

    def _call_once(self, method, path, data, idempotency_key):
        self.url = self.rng.choice(self.urls)
        try:
            return super()._call_once(method, path, data, idempotency_key)
        except UNKNOWN_OUTCOME as error:
            # Refused (no server: nothing arrived), or reset or cut mid-answer (the server was
            # killed under the request: its outcome is unknown). Counted, so the figures show
            # what the kills hit.
            reason = getattr(error, "reason", error)
            refused = isinstance(reason, ConnectionRefusedError)
            self.journal.write({"t": "cut", "path": path.split("?")[0], "refused": refused})
            raise


class Journal:
    def __init__(self, path):
        self.file = open(path, "a", encoding="utf-8")

    def write(self, entry):
        self.file.write(json.dumps(entry, separators=(",", ":")) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())


def owed_purchases(path, client):
    """Purchases this client's earlier incarnations owed and never saw granted."""
    owed = {}
    if not os.path.exists(path):
        return owed
    with open(path, encoding="utf-8") as journal:
        for line in journal:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut by the kill: never fsynced, so never acknowledged
            if entry.get("t") == "intent" and entry["purchase_id"].startswith(client + "i"):
                owed[entry["purchase_id"]] = entry
            elif entry.get("t") == "ack" and entry.get("kind") == "grant":
                owed.pop(entry["purchase_id"], None)
    return owed


class Driver:
    def __init__(self, args):
        self.rng = random.Random(args.seed)
        self.journal = Journal(args.journal)
        self.hoard = SpreadHoard(args.urls.split(","), args.api_key, self.rng, self.journal)
        self.players = args.players.split(",")
        self.client = args.client
        self.prefix = f"{args.client}i{args.incarnation}"
        self.owed = owed_purchases(args.journal, args.client)
        self.sessions = {}
        self.counter = 0
        self.holder = None
        self.renewed_at = 0.0
        self.renew_every_s = 1.0
        self.deadline = time.monotonic() + args.run_s

    # -- plumbing -------------------------------------------------------------------------------

    def next_id(self, kind):
        self.counter += 1
        return f"{self.prefix}{kind}{self.counter}"

    def ack(self, kind, session, **extra):
        self.journal.write({"t": "ack", "kind": kind, "key": session_key(session), "version": session.version,
                            "value": session.saved, **extra})

    def until_answered(self, call):
        """Runs `call` (one request, sent unchanged each time) until it answers something other
        than "outcome unknown" or "retry"; raises GaveUp past the deadline."""
        deadline = time.monotonic() + UNKNOWN_RETRY_DEADLINE_S
        while True:
            try:
                return call()
            except HoardError as error:
                if error.code in ("holder_expired", "holder_gone"):
                    raise HolderLost() from error
                if error.code not in RETRY_CODES and error.status not in RETRY_STATUSES:
                    raise
            except UNKNOWN_OUTCOME:
                pass
            if time.monotonic() > deadline:
                raise GaveUp()
            time.sleep(UNKNOWN_RETRY_PAUSE_S)
            self.renew_if_due()

    def register(self):
        self.sessions.clear()
        answer = self.until_answered(lambda: self.hoard.register_holder(self.client))
        self.holder = answer["holder"]
        self.renew_every_s = answer["renew_every_ms"] / 1000
        self.renewed_at = time.monotonic()

    def renew_if_due(self):
        if time.monotonic() - self.renewed_at < self.renew_every_s:
            return
        try:
            self.hoard.renew_holder(self.holder)
            self.renewed_at = time.monotonic()
        except HoardError as error:
            if error.code in ("holder_gone", "holder_expired"):
                raise HolderLost() from error
        except UNKNOWN_OUTCOME:
            pass  # tried again at the next operation; the lease outlives a few misses

    def drop(self, *keys):
        for key in keys:
            self.sessions.pop(key, None)

    # -- operations -----------------------------------------------------------------------------

    def start(self):
        free = [key for key in self.players if key not in self.sessions]
        owed = [entry["key"] for entry in self.owed.values() if entry["key"] in free]
        key = self.rng.choice(owed or free)
        policy = self.rng.choice(["wait_then_steal", "wait_then_steal", "wait_then_steal", "fail_fast"])
        self.journal.write({"t": "attempt", "kind": "start"})
        try:
            session = self.until_answered(
                lambda: self.hoard.start(STORE, key, self.holder, policy=policy, wait_ms=START_WAIT_MS))
        except HoardError as error:
            if error.code == "locked":
                return
            raise
        if session.data is None:
            self.journal.write({"t": "anomaly", "what": "a seeded player has no value", "key": key})
            return
        self.sessions[key] = session
        self.ack("start", session)

    def save(self, session, kind="save"):
        self.journal.write({"t": "attempt", "kind": kind})
        write = session.save if kind == "save" else session.end
        answer = self.until_answered(write)
        self.ack(kind, session, outcome="replayed" if answer.get("replayed") else "written")

    def trade(self, first, second):
        legs = []
        items = sorted(first.data["items"])
        if items and self.rng.random() < 0.8:
            legs.append({"from": 0, "to": 1, "items": [self.rng.choice(items)]})
        gold = self.rng.randint(0, min(TRADE_GOLD_MAX, second.data["currencies"]["gold"]))
        if gold > 0:
            legs.append({"from": 1, "to": 0, "currencies": {"gold": gold}})
        if not legs:
            return
        trade_id = self.next_id("t")
        self.journal.write({"t": "attempt", "kind": "trade"})
        try:
            answer = self.until_answered(lambda: self.hoard.trade(trade_id, [first, second], legs))
        except HoardError as error:
            if error.code in ("item_not_held", "insufficient_balance", "trade_id_reused", "invalid_trade"):
                self.journal.write({"t": "anomaly", "what": f"trade refused: {error}", "trade_id": trade_id})
                self.drop(session_key(first), session_key(second))
                return
            raise
        parties = [{"key": party["key"], "version": party["version"], "value": party["value"]}
                   for party in answer["parties"]]
        self.journal.write({"t": "ack", "kind": "trade", "trade_id": trade_id, "outcome": answer["outcome"],
                            "parties": parties})

    def grant(self, session, purchase_id):
        key = session_key(session)
        if purchase_id not in self.owed:
            entry = {"t": "intent", "purchase_id": purchase_id, "key": key, "gold": GRANT_GOLD}
            self.journal.write(entry)
            self.owed[purchase_id] = entry
        grant = [{"op": "increment", "path": "/currencies/gold", "by": GRANT_GOLD},
                 {"op": "set", "path": f"/purchases/{purchase_id}", "value": True}]
        self.journal.write({"t": "attempt", "kind": "grant"})
        try:
            answer = self.until_answered(lambda: session.receipt(purchase_id, {"gold": GRANT_GOLD}, grant))
        except HoardError as error:
            if error.code in ("receipt_refused", "precondition_failed"):
                self.journal.write({"t": "anomaly", "what": f"purchase refused: {error}", "purchase_id": purchase_id})
                self.owed.pop(purchase_id, None)
                return
            raise
        self.owed.pop(purchase_id, None)
        party = answer["party"]
        self.journal.write({"t": "ack", "kind": "grant", "purchase_id": purchase_id, "gold": GRANT_GOLD,
                            "outcome": answer["outcome"], "key": party["key"], "version": party["version"],
                            "value": party["value"]})

    def poll_events(self):
        try:
            events = self.hoard.call("GET", f"/v1/holders/{self.holder}/events?poll=1")
        except (HoardError, *UNKNOWN_OUTCOME):
            return  # read again at the next poll: a missed handoff request ends in a steal
        for stolen in events.get("stolen", []):
            self.drop(stolen["key"])
        for request in events.get("requests", []):
            session = self.sessions.get(request["key"])
            if session is not None:
                self.run_on([request["key"]], lambda s=session: self.save(s, "end"))
                self.drop(request["key"])

    def run_on(self, keys, operation):
        """Runs one operation on sessions; a session that is over, or whose state is unknown,
        is dropped (never written again)."""
        try:
            operation()
        except HoardError as error:
            if error.code in ("fenced_out", "stale"):
                self.journal.write({"t": "fenced", "code": error.code})
                self.drop(*keys)
                return
            raise
        except GaveUp:
            self.journal.write({"t": "gave_up"})
            self.drop(*keys)

    def step(self, operation_index):
        if operation_index % EVENTS_POLL_EVERY_OPERATIONS == 0:
            self.poll_events()
        held = list(self.sessions)
        for purchase_id, entry in list(self.owed.items()):
            if entry["key"] in self.sessions:
                self.run_on([entry["key"]], lambda e=entry, p=purchase_id: self.grant(self.sessions[e["key"]], p))
                return
        choice = self.rng.random()
        if len(held) < SESSIONS_HELD_MAX and (choice < 0.25 or not held):
            self.run_on([], self.start)
            return
        key = self.rng.choice(held)
        session = self.sessions[key]
        if choice < 0.5:
            session.data["xp"] += self.rng.randint(1, 5)
            self.run_on([key], lambda: self.save(session))
        elif choice < 0.7 and len(held) >= 2:
            other = self.rng.choice([k for k in held if k != key])
            self.run_on([key, other], lambda: self.trade(session, self.sessions[other]))
        elif choice < 0.85:
            self.run_on([key], lambda: self.grant(session, self.next_id("p")))
        elif choice < 0.92:
            self.run_on([key], lambda: self.save(session, "end"))
            self.drop(key)
        else:
            session.data["xp"] += self.rng.randint(1, 5)  # play that is never saved

    def run(self):
        self.register()
        for operation_index in range(OPERATIONS_MAX):
            if time.monotonic() > self.deadline:
                return
            try:
                self.renew_if_due()
                self.step(operation_index)
            except HolderLost:
                self.journal.write({"t": "holder_lost"})
                self.register()


def session_key(session):
    return session.token["key"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--client", required=True)
    parser.add_argument("--incarnation", type=int, required=True)
    parser.add_argument("--journal", required=True)
    parser.add_argument("--players", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--run-s", type=float, default=60)
    parser.add_argument("--check-free", action="store_true",
                        help="start every player with the `wait` policy (never a steal), print which started")
    parser.add_argument("--wait-ms", type=int, default=START_WAIT_MS)
    args = parser.parse_args()
    if args.check_free:
        check_free(args)
    else:
        Driver(args).run()


def check_free(args):
    """After the rounds: every player must start without a steal once dead holders' leases end."""
    hoard = Hoard(args.urls.split(",")[0], args.api_key, timeout_s=REQUEST_TIMEOUT_S + args.wait_ms / 1000)
    holder = hoard.register_holder("check")["holder"]
    started, locked = [], []
    for key in args.players.split(","):
        try:
            hoard.start(STORE, key, holder, policy="wait", wait_ms=args.wait_ms)
            started.append(key)
        except HoardError as error:
            if error.code != "locked":
                raise
            locked.append(key)
    hoard.call("POST", f"/v1/holders/{holder}/release", {})
    print(json.dumps({"started": started, "locked": locked}))


if __name__ == "__main__":
    main()
