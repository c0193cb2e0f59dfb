"""HTTP load for the join benchmark from wrk: a Lua script gives every request its own pre-generated token."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
from typing import TYPE_CHECKING

from httpload import GRACE_SECONDS, LoadResult, join_path, user_tokens

if TYPE_CHECKING:
    from pathlib import Path

WRK_LUA = """-- written by scripts/bench/wrkload.py: one token per request, each thread its own share of them
local tokens_path, join_path, nthreads = "%(tokens)s", "%(path)s", %(threads)d
local threads, started = {}, 0

function setup(thread)
  thread:set("tid", started)
  started = started + 1
  table.insert(threads, thread)
end

function init(args)
  reqs, idx, created, existing, failed, exhausted = {}, 0, 0, 0, 0, 0
  local n = 0
  for token in io.lines(tokens_path) do
    if n %% nthreads == tid then
      reqs[#reqs + 1] = wrk.format("POST", join_path, {["Authorization"] = "Bearer " .. token}, "")
    end
    n = n + 1
  end
end

function request()
  idx = idx + 1
  if idx > #reqs then
    exhausted, idx = exhausted + 1, 1
  end
  return reqs[idx]
end

function response(status, headers, body)
  if status == 201 then
    created = created + 1
  elseif status >= 200 and status < 300 then
    existing = existing + 1
  else
    failed = failed + 1
  end
end

function done(summary, latency, requests)
  local c, e, f, x = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    c, e, f, x = c + t:get("created"), e + t:get("existing"), f + t:get("failed"), x + t:get("exhausted")
  end
  local err = summary.errors
  io.write(string.format('WRK_JSON {"requests": %%d, "duration_us": %%d, "created": %%d, "existing": %%d, ' ..
    '"failed": %%d, "exhausted": %%d, "connect": %%d, "read": %%d, "write": %%d, "timeout": %%d, ' ..
    '"p50_us": %%.1f, "p99_us": %%.1f, "max_us": %%.1f}\\n', summary.requests, summary.duration, c, e, f, x,
    err.connect, err.read, err.write, err.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def run_wrk(
    url: str, event_id: str, secret: str, clients: int, seconds: float, tokens: int, workdir: Path
) -> LoadResult:
    wrk = shutil.which("wrk")
    if wrk is None:
        msg = "wrk is not installed"
        raise RuntimeError(msg)
    threads = max(1, min(2, clients))
    tokens_file, script = workdir / "tokens.txt", workdir / "join.lua"
    tokens_file.write_text("\n".join(user_tokens(secret, "wrk", 0, tokens)) + "\n")
    script.write_text(WRK_LUA % {"tokens": tokens_file, "path": join_path(event_id), "threads": threads})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = [wrk, f"-t{threads}", f"-c{clients}", f"-d{round(seconds)}s", "--timeout", f"{GRACE_SECONDS:.0f}s"]
    done = subprocess.run([*command, "--latency", "-s", str(script), url], capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        msg = f"wrk printed no summary:\n{done.stdout}\n{done.stderr}"
        raise RuntimeError(msg)
    data = json.loads(line.removeprefix("WRK_JSON "))
    errors = {k: data[k] for k in ("connect", "read", "write", "timeout") if data[k]}
    if data["failed"]:
        errors["non-2xx"] = data["failed"]
    if data["exhausted"]:
        errors["tokens_exhausted (wrapped, answers 200)"] = data["exhausted"]
    return LoadResult(
        generator=f"wrk -t{threads} -c{clients} (Lua: one pre-generated token per request)",
        clients=clients,
        seconds=data["duration_us"] / 1e6,
        created=data["created"],
        existing=data["existing"],
        errors=errors,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        client_cpu_seconds=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        tokens=tokens,
    )
