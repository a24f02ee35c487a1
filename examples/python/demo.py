"""Drives a session, a trade and a receipt against a running hoard serve.

    HOARD_URL=http://127.0.0.1:7420 HOARD_API_KEY=... python3 examples/python/demo.py

The key needs the game_server scope on the `players` store (or admin). Exits non-zero on any
unexpected answer.
"""

import os
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hoard_client import Hoard, HoardError  # noqa: E402


def main():
    hoard = Hoard(os.environ.get("HOARD_URL", "http://127.0.0.1:7420"), os.environ["HOARD_API_KEY"])
    run = uuid.uuid4().hex[:8]
    holder = hoard.register_holder("python")["holder"]

    # A session per player: start, change in memory, save, fenced by the token.
    alice, bob = f"alice-{run}", f"bob-{run}"
    a = hoard.start("players", alice, holder)
    b = hoard.start("players", bob, holder)
    hoard.save(a["token"], {"currencies": {"gold": 100}, "items": {f"sword-{run}": {"dmg": 5}}})
    hoard.save(b["token"], {"currencies": {"gold": 10}, "items": {}})

    # A trade: the sword for 7 gold, atomically; retrying with the same key changes nothing.
    legs = [{"from": 0, "to": 1, "items": [f"sword-{run}"]}, {"from": 1, "to": 0, "currencies": {"gold": 7}}]
    first = hoard.trade(f"trade-{run}", [a["token"], b["token"]], legs, idempotency_key=f"trade-{run}")
    assert first["outcome"] == "committed", first
    again = hoard.trade(f"trade-{run}", [a["token"], b["token"]], legs, idempotency_key=f"trade-{run}")
    assert again.get("replayed") is True, again

    # A receipt: granted once, whatever the retries.
    grant = [{"op": "increment", "path": "/currencies/gold", "by": 50}]
    granted = hoard.receipt(a["token"], f"purchase-{run}", {"product": "gold-pack"}, grant)
    assert granted["outcome"] == "granted", granted
    replay = hoard.receipt(a["token"], f"purchase-{run}", {"product": "gold-pack"}, grant)
    assert replay["outcome"] == "already_granted", replay

    # End both sessions with their final values (here: the stored ones).
    alice_value = hoard.read("players", alice)["value"]
    hoard.end(a["token"], alice_value)
    hoard.end(b["token"])
    assert alice_value["currencies"]["gold"] == 157, alice_value
    assert f"sword-{run}" in hoard.read("players", bob)["value"]["items"]

    # A token that no longer holds the key can never write.
    try:
        hoard.save(a["token"], {"currencies": {"gold": 999999}})
        raise SystemExit("a released token saved")
    except HoardError as error:
        assert error.code == "fenced_out", error
    print("ok: session, trade and receipt")


if __name__ == "__main__":
    main()
