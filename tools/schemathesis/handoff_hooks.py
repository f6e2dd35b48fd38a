"""Schemathesis hooks for handoff's conformance run (SCHEMATHESIS_HOOKS=handoff_hooks, with this
folder on PYTHONPATH; crates/handoff-api/tests/api/openapi_conformance.rs sets both).

`GET /v1/interactions/{id}?wait_s=N` is a long poll: for an interaction whose state does not
change it answers after N seconds (0..=300, as documented). A valid N above 1 is lowered to 1
before the request is sent, so the run spends its time on many requests rather than on waiting;
invalid values (negative, over 300, not a number) are sent as generated.
"""

import schemathesis


@schemathesis.hook
def before_call(context, case, kwargs):
    query = case.query
    if not query or "wait_s" not in query:
        return
    value = query["wait_s"]
    try:
        seconds = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return
    if seconds is not None and str(seconds) == str(value).strip() and 1 < seconds <= 300:
        query["wait_s"] = 1
