"""Local Prometheus's target file: every rollout's group survives rollouts registering at once."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from rollout_lab.local import prometheus


def _groups(prom: prometheus.LocalPrometheus) -> dict[str, dict]:
    return {g["labels"]["rollout"]: g for g in json.loads(prom.targets_path.read_text())}


def test_groups_are_kept_per_rollout_and_replaced_by_key(tmp_path: Path) -> None:
    prom = prometheus.LocalPrometheus(tmp_path)
    prom.set_targets("a", ["127.0.0.1:1"], {"rollout": "a", "namespace": "demo"})
    prom.set_targets("b", ["127.0.0.1:2"], {"rollout": "b", "namespace": "demo"})
    prom.set_targets("a", ["127.0.0.1:3"], {"rollout": "a", "namespace": "demo"})
    groups = _groups(prom)
    assert groups["a"]["targets"] == ["127.0.0.1:3"]
    assert groups["b"] == {"targets": ["127.0.0.1:2"], "labels": {"rollout": "b", "namespace": "demo"}}


def test_a_slow_writer_never_overwrites_a_newer_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The demo registers its rollouts from two threads. Hold the first write just before the file
    # is swapped in: without serialising the writes, the second thread's file (both groups) is
    # replaced by the first's older one, and one rollout is never scraped (all its guardrails
    # stay inconclusive until it rolls back).
    prom = prometheus.LocalPrometheus(tmp_path)
    first_in_replace, release = threading.Event(), threading.Event()
    real_replace = prometheus.os.replace

    def held_replace(src: str, dst: Path) -> None:
        if not first_in_replace.is_set():
            first_in_replace.set()
            release.wait(timeout=5)
        real_replace(src, dst)

    monkeypatch.setattr(prometheus.os, "replace", held_replace)
    first = threading.Thread(target=prom.set_targets, args=("a", ["127.0.0.1:1"], {"rollout": "a"}))
    second = threading.Thread(target=prom.set_targets, args=("b", ["127.0.0.1:2"], {"rollout": "b"}))
    first.start()
    assert first_in_replace.wait(timeout=5)
    second.start()
    second.join(timeout=0.5)  # with the lock it waits for the first writer; without, it is done by now
    release.set()
    first.join(timeout=5)
    second.join(timeout=5)
    assert not first.is_alive() and not second.is_alive()
    assert set(_groups(prom)) == {"a", "b"}
