"""Watch-backed caches: a store where the newest version wins, informers fed by the real API server,
and a client that reads from them and writes through."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from rollout_operator import kube
from rollout_operator.informers import CachedClient, Informers, Store, parse_selector

from tests.support.cluster import ClusterAPI
from tests.support.kube import wait_for


def _obj(name: str, version: str, namespace: str = "default", **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": version, "labels": labels,
                         "managedFields": [{"manager": "kubectl"}]}}


class TestStore:
    def test_the_newest_version_wins_and_an_echo_of_it_tells_nobody(self) -> None:
        store, heard = Store(), []
        store.listen(lambda event, obj: heard.append((event, obj["metadata"]["resourceVersion"])))
        assert store.put(_obj("a", "10"))
        assert not store.put(_obj("a", "9")), "an older watch event never replaces a newer write"
        assert not store.put(_obj("a", "10")), "our own write, echoed by the watch"
        assert store.put(_obj("a", "11"))
        assert heard == [("MODIFIED", "10"), ("MODIFIED", "11")]
        assert store.get("default", "a")["metadata"]["resourceVersion"] == "11"  # type: ignore[index]

    def test_managed_fields_are_not_kept(self) -> None:
        store = Store()
        store.put(_obj("a", "1"))
        assert "managedFields" not in store.get("default", "a")["metadata"]  # type: ignore[index]

    def test_a_relist_reports_what_changed_while_the_watch_was_down(self) -> None:
        store, heard = Store(), []
        store.put(_obj("kept", "1"))
        store.put(_obj("changed", "1"))
        store.put(_obj("deleted", "1"))
        store.listen(lambda event, obj: heard.append((event, obj["metadata"]["name"])))
        store.replace([_obj("kept", "1"), _obj("changed", "2"), _obj("new", "3")])
        assert sorted(heard) == [("ADDED", "new"), ("DELETED", "deleted"), ("MODIFIED", "changed")]
        assert store.get("default", "deleted") is None

    def test_list_filters_by_namespace_and_labels(self) -> None:
        store = Store()
        store.put(_obj("a", "1", job="ope", rollout="r"))
        store.put(_obj("b", "2", rollout="r"))
        store.put(_obj("c", "3", namespace="other", job="ope", rollout="r"))
        names = {o["metadata"]["name"] for o in store.list("default", parse_selector("rollout=r,job") or ())}
        assert names == {"a"}
        assert len(store.list(None, parse_selector({"rollout": "r"}) or ())) == 3


def test_selectors_a_store_cannot_evaluate_go_to_the_api() -> None:
    assert parse_selector("a=b, c==d,e") == (("a", "b"), ("c", "d"), ("e", None))
    assert parse_selector("a!=b") is None
    assert parse_selector("env in (a,b)") is None
    assert parse_selector(None) == ()


def _configmap(name: str, managed: bool = True, **data: str) -> dict[str, Any]:
    labels = {"app.kubernetes.io/managed-by": "policy-rollouts"} if managed else {}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default",
                                                                  "labels": labels}, "data": data}


@pytest.fixture
def cached(cluster: ClusterAPI) -> Iterator[tuple[CachedClient, list[tuple[str, str]]]]:
    requests: list[tuple[str, str]] = []
    client = CachedClient(kube.Client.from_kubeconfig(cluster.kubeconfig_path), ("default",),
                          on_request=lambda verb, kind: requests.append((verb, kind)))
    yield client, requests
    client.close()


@pytest.mark.integration
def test_the_cache_follows_the_api_server_and_wakes_listeners(
    cluster: ClusterAPI, cached: tuple[CachedClient, list[tuple[str, str]]]
) -> None:
    client, _ = cached
    heard: list[tuple[str, str]] = []
    client.informers.listen(lambda event, obj: heard.append((event, obj["metadata"]["name"])))
    assert client.find("v1", "ConfigMap", "watched", "default") is None  # starts and syncs the informer
    cluster.client.create(_configmap("watched", a="1"))
    cluster.client.create(_configmap("foreign", managed=False, a="1"))
    wait_for(lambda: client.find("v1", "ConfigMap", "watched", "default") is not None, 10,
             what="the created ConfigMap in the cache")
    cluster.client.patch("v1", "ConfigMap", "watched", "default", {"data": {"a": "2"}})
    wait_for(lambda: (client.get("v1", "ConfigMap", "watched", "default").get("data") or {}).get("a") == "2", 10,
             what="the edit in the cache")
    cluster.client.delete("v1", "ConfigMap", "watched", "default")
    wait_for(lambda: client.find("v1", "ConfigMap", "watched", "default") is None, 10, what="the deletion")
    assert client.find("v1", "ConfigMap", "foreign", "default") is None, "only our objects are streamed"
    assert [e for e, n in heard if n == "watched"] == ["ADDED", "MODIFIED", "DELETED"]
    assert client.informers.sizes() == {"ConfigMap": len(client.list("v1", "ConfigMap", "default"))}


@pytest.mark.integration
def test_apply_writes_through_and_writes_nothing_when_nothing_changed(
    cluster: ClusterAPI, cached: tuple[CachedClient, list[tuple[str, str]]]
) -> None:
    client, requests = cached
    client.find("v1", "ConfigMap", "applied", "default")
    requests.clear()
    created = client.apply(_configmap("applied", a="1"))
    assert client.get("v1", "ConfigMap", "applied", "default") == {
        k: v for k, v in created.items()} | {"metadata": {k: v for k, v in created["metadata"].items()
                                                           if k != "managedFields"}}, "readable at once"
    for _ in range(5):
        client.apply(_configmap("applied", a="1"))
    client.apply(_configmap("applied", a="2"))
    assert requests == [("create", "ConfigMap"), ("patch", "ConfigMap")]
    assert cluster.get("configmaps", "default", "applied")["data"] == {"a": "2"}  # type: ignore[index]


@pytest.mark.integration
def test_a_kind_rbac_does_not_let_us_watch_is_read_from_the_api(cluster: ClusterAPI) -> None:
    requests: list[tuple[str, str]] = []
    operator = kube.Client.from_kubeconfig(cluster.operator_kubeconfig)  # the chart's ServiceAccount
    client = CachedClient(operator, None, on_request=lambda verb, kind: requests.append((verb, kind)),
                          kinds=[("v1", "PersistentVolumeClaim")])
    try:
        with pytest.raises(kube.Forbidden):
            client.get("v1", "PersistentVolumeClaim", "any", "default")
        assert client.informers.degraded, "the controller polls what it cannot watch"
        assert requests == [("get", "PersistentVolumeClaim")]
    finally:
        client.close()


def test_informers_skip_kinds_outside_their_namespaces() -> None:
    informers = Informers(kube.Client.__new__(kube.Client), namespaces=("team-a",))
    assert informers.store("v1", "ConfigMap", "team-b") is None
    assert informers.store("v1", "PersistentVolumeClaim", "team-a") is None, "not an owned kind"


@pytest.mark.integration
def test_the_watch_resumes_where_it_ended(cluster: ClusterAPI) -> None:
    """The API server ends every watch after its timeout; the informer watches again from the last version."""
    from rollout_operator.informers import Informer

    informer = Informer(cluster.client, "v1", "ConfigMap", "default", watch_timeout=1).start()
    try:
        assert informer.synced.wait(10)
        for i in range(3):
            cluster.client.apply(_configmap("renewed", a=str(i)))
            wait_for(lambda i=i: ((informer.store.get("default", "renewed") or {}).get("data") or {}).get("a")
                     == str(i), 10, what=f"version {i} through a renewed watch")
            time.sleep(1.5)  # past the watch's timeout
    finally:
        informer.stop()
