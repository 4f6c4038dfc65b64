"""A node's bounds as a user sees them on /diagnostics."""

from edge_lam.ros.bounds import usage_status


def test_usage_is_ok_below_ninety_percent_warns_from_there_and_errors_over_the_bound():
    ok = usage_status("gw: bounds", "gw", {"queued_requests": (3, 64), "sessions": (10, 100)})
    assert ok.level == "ok" and ok.values == {"queued_requests": "3 / 64", "sessions": "10 / 100"}
    warn = usage_status("gw: bounds", "gw", {"queued_requests": (60, 64), "sessions": (10, 100)})
    assert warn.level == "warn" and warn.message.startswith("queued_requests at 94%")
    assert usage_status("s", "s", {"kv_bytes": (2.5e9, 2e9)}).level == "error"
    assert usage_status("s", "s", {}).level == "ok"
