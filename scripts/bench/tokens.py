"""Verifying a token not seen before: Lineup's plain HS256 path beside PyJWT's path through Litestar.

Every command from a user whose token this process has not verified yet, and every /ws `auth` frame,
pays one verification. Both paths get the same tokens (as `lineup token` issues them, one user each,
alternating rounds so that both see the same machine), and the script prints the CPU time per token
of each (thread time, median over the rounds) and their ratio. The baseline is what Lineup ran
before the plain path: Litestar's `Token.decode` (PyJWT's `jwt.decode`, Litestar's conversion)
with Lineup's payload rules.

    .venv/bin/python scripts/bench/tokens.py [--tokens 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from entrypoints.auth import LineupToken, issue, remember_hs256_keys

SECRET = "bench-" + "s" * 42  # 48 bytes: at least the 32 below which PyJWT warns (and Lineup takes its path)


def lineup(token: str) -> object:
    return LineupToken.decode(token, SECRET, "HS256", remember=False)


def pyjwt(token: str) -> object:
    return super(LineupToken, LineupToken).decode(token, SECRET, "HS256")


def per_token_us(verify: object, tokens: list[str]) -> float:
    assert callable(verify)
    started = time.thread_time()
    for token in tokens:
        verify(token)
    return (time.thread_time() - started) / len(tokens) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=20_000, help="tokens per round, each verified once per path")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    remember_hs256_keys()  # as `jwt_auth` installs it in the server
    tokens = [issue(SECRET, f"user-{i}", role="service" if i % 10 == 0 else "user") for i in range(args.tokens)]
    for verify in (lineup, pyjwt):  # warm up, and both must accept every token
        assert all(verify(token) for token in tokens[:100])
    timings: dict[str, list[float]] = {"lineup": [], "pyjwt": []}
    for _ in range(args.rounds):
        timings["lineup"].append(per_token_us(lineup, tokens))
        timings["pyjwt"].append(per_token_us(pyjwt, tokens))
    mine, base = statistics.median(timings["lineup"]), statistics.median(timings["pyjwt"])
    print(f"token verification, {args.tokens:,} new tokens x {args.rounds} rounds (CPU per token, median):")
    print(f"  Lineup (plain HS256 path) {mine:6.1f} us   rounds {[round(t, 1) for t in timings['lineup']]}")
    print(f"  PyJWT via Litestar        {base:6.1f} us   rounds {[round(t, 1) for t in timings['pyjwt']]}")
    print(f"  ratio Lineup / PyJWT      {mine / base:6.2f}")
    print(json.dumps({"benchmark": "tokens", "lineup_us": round(mine, 2), "pyjwt_us": round(base, 2)}))


if __name__ == "__main__":
    main()
