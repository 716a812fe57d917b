"""The emulator fixture behaves like an API server where our clients look: stamping, patch
semantics, status subresource, selectors, watch, discovery, the request recorder, the fake
Deployment controller, and a real kopf operator reconciling a PolicyRollout through it."""

from __future__ import annotations

import json
import threading

import httpx
import kopf
import kubernetes
import pytest
from rollout_operator import api

from tests.support.kube import ApiCall, KopfThread, KubeAPI, label_selector_matches, policy_rollout_manifest, wait_for

pytestmark = pytest.mark.integration

PR_PATH = f"/apis/{api.GROUP}/{api.VERSION}/namespaces/default/{api.PLURAL}"
MERGE = {"Content-Type": "application/merge-patch+json"}
JSONPATCH = {"Content-Type": "application/json-patch+json"}


@pytest.fixture()
def http(kube_api: KubeAPI):
    with httpx.Client(base_url=kube_api.url, timeout=10) as client:
        yield client


def _create_rollout(http: httpx.Client, name: str = "pricing") -> dict:
    manifest = policy_rollout_manifest(name=name)
    manifest["status"] = {"phase": "Promoted"}  # must be dropped: status is a subresource
    response = http.post(PR_PATH, json=manifest)
    assert response.status_code == 200, response.text
    return response.json()


def test_create_stamps_server_fields_and_drops_status(http: httpx.Client, kube_api: KubeAPI) -> None:
    first = _create_rollout(http, "a")
    second = _create_rollout(http, "b")
    for obj in (first, second):
        meta = obj["metadata"]
        assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
        assert meta["generation"] == 1
        assert meta["namespace"] == "default"
        assert "status" not in obj
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    assert first["metadata"]["uid"] != second["metadata"]["uid"]
    assert http.post(PR_PATH, json=policy_rollout_manifest(name="a")).status_code == 409
    assert kube_api.get("PolicyRollout", "default", "a")["metadata"]["uid"] == first["metadata"]["uid"]


def test_generate_name(http: httpx.Client) -> None:
    names = set()
    for _ in range(3):
        response = http.post("/api/v1/namespaces/default/events", json={"metadata": {"generateName": "ev."}})
        assert response.status_code == 200, response.text
        names.add(response.json()["metadata"]["name"])
    assert len(names) == 3 and all(n.startswith("ev.") for n in names)
    assert http.post("/api/v1/namespaces/default/events", json={"metadata": {}}).status_code == 422


def test_json_patch_test_failure_is_422_and_changes_nothing(http: httpx.Client, kube_api: KubeAPI) -> None:
    obj = _create_rollout(http)
    rv = obj["metadata"]["resourceVersion"]
    stale = [{"op": "test", "path": "/metadata/resourceVersion", "value": "nope"},
             {"op": "add", "path": "/metadata/finalizers", "value": ["x"]}]
    response = http.patch(f"{PR_PATH}/pricing", content=json.dumps(stale), headers=JSONPATCH)
    assert response.status_code == 422
    assert response.json()["kind"] == "Status"
    assert "finalizers" not in kube_api.get("PolicyRollout", "default", "pricing")["metadata"]

    fresh = [{"op": "test", "path": "/metadata/resourceVersion", "value": rv},
             {"op": "add", "path": "/metadata/finalizers", "value": ["x"]}]
    response = http.patch(f"{PR_PATH}/pricing", content=json.dumps(fresh), headers=JSONPATCH)
    assert response.status_code == 200, response.text
    assert response.json()["metadata"]["finalizers"] == ["x"]
    assert response.json()["metadata"]["resourceVersion"] != rv


def test_status_subresource_and_generation(http: httpx.Client) -> None:
    _create_rollout(http)
    # /status writes only status; spec changes there are ignored, generation stays.
    r = http.patch(f"{PR_PATH}/pricing/status", json={"status": {"phase": "Shadow"}, "spec": {"steps": []}},
                   headers=MERGE).json()
    assert r["status"] == {"phase": "Shadow"}
    assert r["spec"]["steps"] != []
    assert r["metadata"]["generation"] == 1
    # The main path ignores status and bumps generation on spec changes only.
    r = http.patch(f"{PR_PATH}/pricing", json={"spec": {"steps": [{"setWeight": 50}]}, "status": {"phase": "X"}},
                   headers=MERGE).json()
    assert r["status"] == {"phase": "Shadow"}
    assert r["spec"]["steps"] == [{"setWeight": 50}]
    assert r["metadata"]["generation"] == 2
    r2 = http.patch(f"{PR_PATH}/pricing", json={"metadata": {"labels": {"team": "pricing"}}}, headers=MERGE).json()
    assert r2["metadata"]["generation"] == 2
    assert r2["metadata"]["resourceVersion"] != r["metadata"]["resourceVersion"]
    # A no-op patch creates no new version.
    r3 = http.patch(f"{PR_PATH}/pricing", json={"metadata": {"labels": {"team": "pricing"}}}, headers=MERGE).json()
    assert r3["metadata"]["resourceVersion"] == r2["metadata"]["resourceVersion"]


def test_stale_resource_version_conflicts(http: httpx.Client) -> None:
    obj = _create_rollout(http)
    http.patch(f"{PR_PATH}/pricing", json={"metadata": {"labels": {"a": "1"}}}, headers=MERGE)
    stale = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"], "labels": {"a": "2"}}}
    response = http.patch(f"{PR_PATH}/pricing", json=stale, headers=MERGE)
    assert response.status_code == 409
    assert response.json()["reason"] == "Conflict"


def test_put_replaces(http: httpx.Client) -> None:
    obj = _create_rollout(http)
    obj["spec"]["steps"] = [{"setWeight": 100}]
    obj["metadata"]["labels"] = {"b": "2"}
    response = http.put(f"{PR_PATH}/pricing", json=obj)
    assert response.status_code == 200, response.text
    assert response.json()["spec"]["steps"] == [{"setWeight": 100}]
    assert response.json()["metadata"]["generation"] == 2


def test_finalizers_hold_deletion(http: httpx.Client, kube_api: KubeAPI) -> None:
    _create_rollout(http)
    http.patch(f"{PR_PATH}/pricing", json={"metadata": {"finalizers": ["policy.rollouts.io/cleanup"]}}, headers=MERGE)
    assert http.delete(f"{PR_PATH}/pricing").status_code == 200
    held = kube_api.get("PolicyRollout", "default", "pricing")
    assert held is not None and held["metadata"]["deletionTimestamp"]
    http.patch(f"{PR_PATH}/pricing", json={"metadata": {"finalizers": None}}, headers=MERGE)
    assert kube_api.get("PolicyRollout", "default", "pricing") is None
    assert http.get(f"{PR_PATH}/pricing").status_code == 404


def test_lists_have_kind_and_honour_selectors(http: httpx.Client) -> None:
    for name, team in (("a", "x"), ("b", "y"), ("c", "x")):
        manifest = policy_rollout_manifest(name=name)
        manifest["metadata"]["labels"] = {"team": team}
        http.post(PR_PATH, json=manifest)
    listed = http.get(PR_PATH, params={"labelSelector": "team=x"}).json()
    assert listed["kind"] == "PolicyRolloutList"
    assert listed["apiVersion"] == api.API_VERSION
    assert sorted(o["metadata"]["name"] for o in listed["items"]) == ["a", "c"]
    by_name = http.get(PR_PATH, params={"fieldSelector": "metadata.name=b"}).json()
    assert [o["metadata"]["name"] for o in by_name["items"]] == ["b"]


@pytest.mark.parametrize(("selector", "expected"), [
    ("a=1", True), ("a==1", True), ("a!=1", False), ("a", True), ("!a", False), ("b", False), ("!b", True),
    ("a in (1,2)", True), ("a notin (1,2)", False), ("a=1,c=3", True), ("a=1,c=4", False), ("", True),
])
def test_label_selector_grammar(selector: str, expected: bool) -> None:
    assert label_selector_matches(selector, {"a": "1", "c": "3"}) is expected


def test_discovery_core_group_and_namespaces(http: httpx.Client) -> None:
    core = http.get("/api/v1").json()
    assert core["groupVersion"] == "v1"
    assert "pods" in {r["name"] for r in core["resources"]}
    namespaces = http.get("/api/v1/namespaces")
    assert namespaces.status_code == 200, namespaces.text
    assert namespaces.json()["kind"] == "NamespaceList"
    assert "default" in {n["metadata"]["name"] for n in namespaces.json()["items"]}
    assert http.get("/api/v1/namespaces/default").json()["metadata"]["name"] == "default"
    ours = http.get(f"/apis/{api.GROUP}/{api.VERSION}").json()
    assert {r["name"] for r in ours["resources"]} == {api.PLURAL, f"{api.PLURAL}/status"}
    for path in ("/apis/gateway.networking.k8s.io/v1", "/apis/networking.istio.io/v1"):
        assert http.get(path).status_code == 200


def test_official_client_discovers_and_reads(kube_api: KubeAPI, tmp_path) -> None:
    """The official client, configured only from the fixture's kubeconfig, sees core and custom kinds."""
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(kube_api.kubeconfig_path), client_configuration=config)
    with kubernetes.client.ApiClient(config) as client:
        dyn = kubernetes.dynamic.DynamicClient(client, cache_file=str(tmp_path / "discovery.json"))
        assert dyn.resources.get(api_version="v1", kind="Namespace").get(name="default").metadata.name == "default"
        rollouts = dyn.resources.get(api_version=api.API_VERSION, kind=api.KIND)
        assert rollouts.namespaced and "status" in rollouts.subresources
        assert rollouts.get(namespace="default").items == []


def test_watch_streams_json_events_for_selected_objects(kube_api: KubeAPI, http: httpx.Client) -> None:
    events: list[dict] = []
    opened = threading.Event()

    def watch() -> None:
        params = {"watch": "true", "labelSelector": "team=x"}
        with httpx.stream("GET", kube_api.url + PR_PATH, params=params, timeout=10) as response:
            events.append({"content-type": response.headers["content-type"]})
            opened.set()
            for line in response.iter_lines():
                if line.strip():
                    events.append(json.loads(line))
                if len(events) >= 2:
                    return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert opened.wait(10)
    other = policy_rollout_manifest(name="other")
    other["metadata"]["labels"] = {"team": "y"}
    http.post(PR_PATH, json=other)
    mine = policy_rollout_manifest(name="mine")
    mine["metadata"]["labels"] = {"team": "x"}
    http.post(PR_PATH, json=mine)
    thread.join(10)
    assert events[0]["content-type"].startswith("application/json")
    assert events[1]["type"] == "ADDED"
    assert events[1]["object"]["metadata"]["name"] == "mine"


def test_request_recorder_sees_rbac_verbs(http: httpx.Client, kube_api: KubeAPI) -> None:
    _create_rollout(http)
    http.get(f"{PR_PATH}/pricing")
    http.get(PR_PATH)
    http.patch(f"{PR_PATH}/pricing/status", json={"status": {"phase": "Shadow"}}, headers=MERGE)
    http.delete(f"{PR_PATH}/pricing")
    http.get("/apis")  # discovery is not a resource call
    calls = kube_api.calls_to(api.PLURAL)
    rollout = (api.GROUP, api.VERSION, api.PLURAL)
    assert calls == [
        ApiCall("create", *rollout, None, "default"),
        ApiCall("get", *rollout, None, "default"),
        ApiCall("list", *rollout, None, "default"),
        ApiCall("patch", *rollout, "status", "default"),
        ApiCall("delete", *rollout, None, "default"),
    ]
    assert all(c.resource != "" for c in kube_api.calls)


def test_fake_deployment_controller_reports_ready(kube_api: KubeAPI, fake_deployment_controller) -> None:
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"a": "b"}}, "template": {
            "metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}},
    }
    fake_deployment_controller.unready.add("slow")
    slow = json.loads(json.dumps(deployment))
    slow["metadata"]["name"] = "slow"
    with httpx.Client(base_url=kube_api.url) as http:
        for obj in (deployment, slow):
            assert http.post("/apis/apps/v1/namespaces/default/deployments", json=obj).status_code == 200

    def ready() -> dict | None:
        status = (kube_api.get("deployments", "default", "web") or {}).get("status", {})
        return status if status.get("readyReplicas") == 3 else None

    status = wait_for(ready, what="the fake controller to mark web ready")
    assert status["observedGeneration"] == 1 and status["availableReplicas"] == 3
    slow_status = wait_for(lambda: kube_api.get("deployments", "default", "slow").get("status"))
    assert slow_status["readyReplicas"] == 0


def test_kopf_operator_reconciles_through_the_emulator(kube_api: KubeAPI) -> None:
    """A real kopf operator (own thread) sees a PolicyRollout, its handler writes status over HTTP;
    its finalizer holds deletion until the delete handler ran."""
    registry = kopf.OperatorRegistry()
    deleted = threading.Event()

    @kopf.on.create(api.GROUP, api.VERSION, api.PLURAL, registry=registry)
    def created(spec: dict, patch: kopf.Patch, **_: object) -> None:
        patch.status["phase"] = "Shadow"
        patch.status["candidateVersion"] = spec["policy"]["version"]

    @kopf.on.delete(api.GROUP, api.VERSION, api.PLURAL, registry=registry)
    def on_delete(**_: object) -> None:
        deleted.set()

    with KopfThread(kube_api, registry, namespaces=["default"]), httpx.Client(base_url=kube_api.url) as http:
        assert http.post(PR_PATH, json=policy_rollout_manifest(name="pricing")).status_code == 200

        def status() -> dict | None:
            obj = http.get(f"{PR_PATH}/pricing").json()
            return obj if obj.get("status", {}).get("phase") == "Shadow" else None

        obj = wait_for(status, timeout=30, what="kopf's create handler to write status")
        assert obj["status"]["candidateVersion"] == "v2"
        # kopf added its finalizer (a JSON patch that tests resourceVersion) before handling.
        assert obj["metadata"]["finalizers"]

        assert http.delete(f"{PR_PATH}/pricing").status_code == 200
        wait_for(lambda: http.get(f"{PR_PATH}/pricing").status_code == 404, timeout=30,
                 what="kopf to run the delete handler and release its finalizer")
    assert deleted.is_set()
    assert ApiCall("patch", api.GROUP, api.VERSION, api.PLURAL, "status", "default") in kube_api.calls \
        or ApiCall("patch", api.GROUP, api.VERSION, api.PLURAL, None, "default") in kube_api.calls


def test_errors_read_like_a_real_api_server(http: httpx.Client) -> None:
    missing = http.get(f"{PR_PATH}/nope").json()
    assert (missing["code"], missing["reason"]) == (404, "NotFound")
    assert missing["message"] == f'{api.PLURAL}.{api.GROUP} "nope" not found'
    _create_rollout(http, "dup")
    duplicate = http.post(PR_PATH, json=policy_rollout_manifest(name="dup")).json()
    assert (duplicate["code"], duplicate["reason"]) == (409, "AlreadyExists")
    assert http.get("/apis/example.com/v1/namespaces/default/widgets").status_code == 404


def test_watch_timeout_seconds_ends_the_stream(kube_api: KubeAPI) -> None:
    params = {"watch": "true", "timeoutSeconds": "1"}
    with httpx.stream("GET", kube_api.url + PR_PATH, params=params, timeout=10) as response:
        lines = [line for line in response.iter_lines() if line.strip()]
    assert lines == []  # the stream ended by itself, with nothing to report


def test_kopf_thread_reusing_a_registry_talks_to_the_newest_emulator(tmp_path) -> None:
    """Handlers in kopf's global registry outlive a test: the next test's operator must not log in
    to the previous (stopped) emulator."""
    registry = kopf.OperatorRegistry()
    seen: list[str] = []

    @kopf.on.create(api.GROUP, api.VERSION, api.PLURAL, registry=registry)
    def created(name: str, **_: object) -> None:
        seen.append(name)

    for round_ in ("first", "second"):
        server = KubeAPI(tmp_path / round_)
        (tmp_path / round_).mkdir()
        server.start()
        try:
            with KopfThread(server, registry, namespaces=["default"]), httpx.Client(base_url=server.url) as http:
                assert http.post(PR_PATH, json=policy_rollout_manifest(name=round_)).status_code == 200
                wait_for(lambda r=round_: r in seen, timeout=30, what=f"kopf to handle {round_}")
        finally:
            server.stop()
    assert seen == ["first", "second"]


def test_put_and_set_status_helpers(kube_api: KubeAPI, http: httpx.Client) -> None:
    kube_api.put("PolicyRollout", policy_rollout_manifest(name="seeded"))
    stored = http.get(f"{PR_PATH}/seeded").json()
    assert stored["metadata"]["uid"] and stored["metadata"]["resourceVersion"]
    assert kube_api.set_status("PolicyRollout", "default", "seeded", {"phase": "Paused"}) is True
    assert kube_api.set_status("PolicyRollout", "default", "seeded", {"phase": "Paused"}) is False  # no change
    after = http.get(f"{PR_PATH}/seeded").json()
    assert after["status"] == {"phase": "Paused"}
    assert int(after["metadata"]["resourceVersion"]) > int(stored["metadata"]["resourceVersion"])
    with pytest.raises(KeyError, match="register it"):
        kube_api.objects("Widget")
