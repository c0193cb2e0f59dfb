"""Operational endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from litestar import MediaType, Response, get

from adapters.postgres.status import projection_status
from entrypoints.bootstrap import TRACKING_TABLE, Container

READY_LAG_SECONDS = 5.0


@get("/health", tags=["ops"], summary="200 while the process is up")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/ready", sync_to_thread=True, tags=["ops"], summary="200 when the event store answers and projections keep up")
def ready(container: Container) -> Response[dict[str, object]]:
    names = [runner.name for runner in container.runners]
    try:
        head, statuses = projection_status(container.queues, container.pool, names, TRACKING_TABLE)
    except Exception as error:  # any failure to reach the store means "not ready"
        return Response({"error": "unavailable", "detail": f"event store does not answer: {error}"}, status_code=503)
    behind = [s.name for s in statuses if s.lag_seconds >= READY_LAG_SECONDS]
    if behind:
        detail = f"projections more than {READY_LAG_SECONDS:g} s behind: {', '.join(behind)}"
        return Response({"error": "unavailable", "detail": detail}, status_code=503)
    body: dict[str, object] = {"status": "ready", "head": head, "projections": {s.name: s.position for s in statuses}}
    return Response(body, status_code=200)


@get("/metrics", sync_to_thread=True, tags=["ops"], summary="Prometheus text format", media_type=MediaType.TEXT)
def metrics(container: Container) -> str:
    names = [runner.name for runner in container.runners]
    head, statuses = projection_status(container.queues, container.pool, names, TRACKING_TABLE)
    lines = [
        "# HELP lineup_log_head Position of the newest event in the log.",
        "# TYPE lineup_log_head gauge",
        f"lineup_log_head {head}",
        "# HELP lineup_projection_position Last log position a projection has committed.",
        "# TYPE lineup_projection_position gauge",
        *(f'lineup_projection_position{{projection="{s.name}"}} {s.position}' for s in statuses),
        "# HELP lineup_projection_lag_events Events a projection has still to process.",
        "# TYPE lineup_projection_lag_events gauge",
        *(f'lineup_projection_lag_events{{projection="{s.name}"}} {s.lag_events}' for s in statuses),
        "# HELP lineup_projection_lag_seconds Age of the oldest event a projection has still to process.",
        "# TYPE lineup_projection_lag_seconds gauge",
        *(f'lineup_projection_lag_seconds{{projection="{s.name}"}} {s.lag_seconds:.3f}' for s in statuses),
    ]
    return "\n".join(lines) + "\n"
