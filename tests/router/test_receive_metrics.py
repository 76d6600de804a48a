"""What the SCP counts, scraped from a real `hiprouter serve` over HTTP while DCMTK peers
store, get refused and get rejected."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import free_port
from tests.router.conftest import echoscu, make_cr_files, storescu


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        head, _, number = line.rpartition(" ")
        metric_name, _, rest = head.partition("{")
        if metric_name == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += float(number)
    return total


def test_received_refused_and_rejected_are_counted(router_process: Any,
                                                   tmp_path: Path) -> None:
    port = free_port()
    router = router_process({"web": {"enabled": True, "port": port, "status_page": False}})
    files = make_cr_files(tmp_path / "in", 3, size=64)
    assert storescu(router.port, files).returncode == 0
    router.stop()
    full = router_process({"web": {"enabled": True, "port": port, "status_page": False},
                           "storage": {"min_free_mb": 10**9}})  # "disk full"
    storescu(full.port, files[:2])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        after_refusals = r.read().decode()
    assert metric(after_refusals, "hiprouter_instances_refused_total",
                  reason="out_of_resources") >= 1  # storescu may stop at the first refusal
    assert metric(after_refusals, "hiprouter_instances_received_total") == 0
    # counters belong to a process: start one on the first router's database and count
    full.stop()
    again = router_process({"web": {"enabled": True, "port": port, "status_page": False}},
                           database_url=router.database_url)
    assert storescu(again.port, files).returncode == 0  # all three are duplicates now
    assert echoscu(again.port, called="SOMEONE-ELSE").returncode != 0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert metric(text, "hiprouter_instances_received_total", outcome="duplicate") == 3
    assert metric(text, "hiprouter_received_bytes_total") > 3 * 64 * 64 * 2
    assert metric(text, "hiprouter_associations_total", direction="in",
                  outcome="rejected") == 1
    assert metric(text, "hiprouter_associations_total", direction="in",
                  outcome="released") == 1
    assert metric(text, "hiprouter_store_seconds_count") == 3
    assert metric(text, "hiprouter_instances", state="stored") == 3  # SQL gauge
