"""Drives sessions, a trade and a receipt against a running hoard serve, keeping the client rules
of hoard's README (base every write on the last version adopted; adopt every returned value).

    HOARD_URL=http://127.0.0.1:7420 HOARD_API_KEY=... python3 examples/python/demo.py

The key needs the game_server scope on the `players` store (or admin). Exits non-zero on any
unexpected answer.
"""

import copy
import os
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hoard_client import Hoard, HoardError, rebase  # noqa: E402


def main():
    hoard = Hoard(os.environ.get("HOARD_URL", "http://127.0.0.1:7420"), os.environ["HOARD_API_KEY"])
    run = uuid.uuid4().hex[:8]
    holder = hoard.register_holder("python")["holder"]

    # A session per player: start, change in memory, save (based on the version adopted).
    alice = hoard.start("players", f"alice-{run}", holder)
    bob = hoard.start("players", f"bob-{run}", holder)
    alice.data = {"currencies": {"gold": 100}, "items": {f"sword-{run}": {"dmg": 5}}, "xp": 0}
    bob.data = {"currencies": {"gold": 10}, "items": {}}
    alice.save()
    bob.save()

    # Unsaved play, then a trade applied to the in-memory values ("save, then trade" in one commit).
    alice.data["xp"] = 3
    legs = [{"from": 0, "to": 1, "items": [f"sword-{run}"]}, {"from": 1, "to": 0, "currencies": {"gold": 7}}]
    first = hoard.trade(f"trade-{run}", [alice, bob], legs)
    assert first["outcome"] == "committed", first
    assert alice.data == {"currencies": {"gold": 107}, "items": {}, "xp": 3}, alice.data
    assert f"sword-{run}" in bob.data["items"], bob.data
    # The same trade id again moves nothing: it answers the first record and the parties as stored
    # (at the versions already adopted, so adopting them changes nothing).
    again = hoard.call("POST", "/v1/trades", {"trade_id": f"trade-{run}", "parties": [alice.token, bob.token],
                                              "legs": legs})
    assert again["outcome"] == "already_committed", again
    for session, party in zip([alice, bob], again["parties"]):
        session.adopt(party["value"], party["version"], session.saved)
    assert alice.data["currencies"]["gold"] == 107, alice.data

    # An autosave based on the pre-trade version is refused as stale: nothing is duplicated.
    old = {"token": alice.token, "base_version": alice.version - 1,
           "value": {"currencies": {"gold": 100}, "items": {f"sword-{run}": {"dmg": 5}}}}
    try:
        hoard.call("POST", "/v1/sessions/save", old)
        raise SystemExit("a stale save was accepted")
    except HoardError as error:
        assert error.code == "stale", error
        assert error.body["current"]["value"]["items"] == {}, error.body

    # A receipt: granted once on the in-memory value, whatever the retries.
    grant = [{"op": "increment", "path": "/currencies/gold", "by": 50}]
    granted = alice.receipt(f"purchase-{run}", {"product": "gold-pack"}, grant)
    assert granted["outcome"] == "granted", granted
    replay = alice.receipt(f"purchase-{run}", {"product": "gold-pack"}, grant, idempotency_key=str(uuid.uuid4()))
    assert replay["outcome"] == "already_granted", replay
    assert alice.data["currencies"]["gold"] == 157, alice.data

    # Rebasing keeps changes the game made while a request was in flight.
    assert rebase({"gold": 70, "items": {}}, {"gold": 100, "items": {"a": 1}}, {"gold": 105, "items": {"a": 1}}) \
        == {"gold": 75, "items": {}}

    # End both sessions with their final values.
    alice.end()
    bob.end()
    stored = hoard.read("players", f"alice-{run}")["value"]
    assert stored == {"currencies": {"gold": 157}, "items": {}, "xp": 3}, stored
    assert f"sword-{run}" in hoard.read("players", f"bob-{run}")["value"]["items"]

    # A token that no longer holds the key can never write.
    try:
        hoard.call("POST", "/v1/sessions/save", {"token": alice.token, "base_version": alice.version,
                                                 "value": copy.deepcopy(stored)})
        raise SystemExit("a released token saved")
    except HoardError as error:
        assert error.code == "fenced_out", error
    print("ok: sessions, a trade, a receipt, a stale save refused")


if __name__ == "__main__":
    main()
