"""The watch caches reconciles read from: projections, newest wins, deletions, secondary keys, children by
controller, and the read seam (a name of a kind cached only by our labels held by someone else's object is read
from the server; a miss is absent)."""

from __future__ import annotations

from typing import Any

from model_traffic import kube
from model_traffic.pipeline.cache import CONDITION_MESSAGE_KEPT, CachedKube, Caches, project, selector_matches


def obj(kind_type: kube.ResourceType, name: str, rv: str, namespace: str = "llm", **fields: Any) -> dict[str, Any]:
    return {"apiVersion": kind_type.api_version, "kind": kind_type.kind,
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": rv,
                         "managedFields": [{"manager": "x"}], "labels": fields.pop("labels", {})}, **fields}


def caches() -> Caches:
    c = Caches()
    c.register(kube.BACKEND, complete=True)
    c.register(kube.SECRET, complete=True)
    c.register(kube.AI_GATEWAY_ROUTE, complete=False)
    c.register(kube.VIRTUAL_MODEL, complete=True,
               secondary=lambda o: [str((o.get("spec") or {}).get("modelName"))])
    return c


def test_a_secret_is_kept_as_its_key_names_only_and_managed_fields_are_dropped() -> None:
    secret = obj(kube.SECRET, "key", "1", data={"apiKey": "c2VjcmV0"}, stringData={"other": "plain"})
    kept = project(kube.SECRET, secret)
    assert kept["data"] == {"apiKey": "", "other": ""}
    assert "c2VjcmV0" not in repr(kept) and "plain" not in repr(kept)
    assert "managedFields" not in kept["metadata"]


def test_an_older_event_never_replaces_what_our_write_returned() -> None:
    c = caches()
    c.put(kube.BACKEND, obj(kube.BACKEND, "b", "105", spec={"v": "written"}))
    c.put(kube.BACKEND, obj(kube.BACKEND, "b", "103", spec={"v": "older event"}))
    assert c.get(kube.BACKEND, "llm", "b")["spec"] == {"v": "written"}  # type: ignore[index]
    c.put(kube.BACKEND, obj(kube.BACKEND, "b", "110", spec={"v": "newer"}))
    assert c.get(kube.BACKEND, "llm", "b")["spec"] == {"v": "newer"}  # type: ignore[index]


def test_a_deletion_drops_the_entry_unless_a_newer_object_took_the_name() -> None:
    c = caches()
    c.put(kube.BACKEND, obj(kube.BACKEND, "b", "5"))
    c.drop(kube.BACKEND, obj(kube.BACKEND, "b", "6"))
    assert c.get(kube.BACKEND, "llm", "b") is None
    c.put(kube.BACKEND, obj(kube.BACKEND, "b", "9"))  # recreated (our write) before the old deletion arrived
    c.drop(kube.BACKEND, obj(kube.BACKEND, "b", "7"))
    assert c.get(kube.BACKEND, "llm", "b") is not None


def test_readers_get_copies() -> None:
    c = caches()
    c.put(kube.BACKEND, obj(kube.BACKEND, "b", "1", status={"x": 1}))
    got = c.get(kube.BACKEND, "llm", "b")
    assert got is not None
    got["status"]["x"] = 2
    assert c.get(kube.BACKEND, "llm", "b")["status"] == {"x": 1}  # type: ignore[index]


def test_secondary_keys_follow_changes_and_deletions() -> None:
    c = caches()
    c.put(kube.VIRTUAL_MODEL, obj(kube.VIRTUAL_MODEL, "a", "1", spec={"modelName": "gpt-4"}))
    c.put(kube.VIRTUAL_MODEL, obj(kube.VIRTUAL_MODEL, "b", "2", namespace="other", spec={"modelName": "gpt-4"}))
    assert [o["metadata"]["name"] for o in c.find(kube.VIRTUAL_MODEL, "gpt-4")] == ["a", "b"]
    c.put(kube.VIRTUAL_MODEL, obj(kube.VIRTUAL_MODEL, "a", "3", spec={"modelName": "llama"}))
    assert [o["metadata"]["name"] for o in c.find(kube.VIRTUAL_MODEL, "gpt-4")] == ["b"]
    c.drop(kube.VIRTUAL_MODEL, obj(kube.VIRTUAL_MODEL, "b", "4", namespace="other"))
    assert c.find(kube.VIRTUAL_MODEL, "gpt-4") == []
    assert sorted(c.keys(kube.VIRTUAL_MODEL)) == [("llm", "a")]


def test_label_selectors_of_equalities() -> None:
    assert selector_matches("a=b,c=d", {"a": "b", "c": "d", "e": "f"})
    assert selector_matches("a==b", {"a": "b"})
    assert not selector_matches("a=b", {"a": "c"})
    assert selector_matches(None, {})




def test_reads_of_cached_kinds_never_reach_the_server_but_a_name_held_by_someone_else_does(
        monkeypatch: Any) -> None:
    c = caches()
    reads: list[str] = []
    monkeypatch.setattr(kube.Kube, "get", lambda self, rtype, ns, name: reads.append(f"{rtype.kind}/{name}"))
    cached = CachedKube.__new__(CachedKube)
    cached.caches = c
    c.put(kube.BACKEND, obj(kube.BACKEND, "b", "1"))
    assert cached.get(kube.BACKEND, "llm", "b") is not None
    assert cached.get(kube.BACKEND, "llm", "absent") is None  # complete: a miss means absent
    assert reads == []
    assert cached.get_ours(kube.AI_GATEWAY_ROUTE, "llm", "r") is None  # ours would be cached: no read
    assert reads == []
    assert cached.get(kube.AI_GATEWAY_ROUTE, "llm", "r") is None  # the watch saw no object of that name at all
    assert reads == []
    c.put(kube.AI_GATEWAY_ROUTE, obj(kube.AI_GATEWAY_ROUTE, "r", "2"))  # someone else's, no labels: name only
    cached.get(kube.AI_GATEWAY_ROUTE, "llm", "r")  # before writing ours over it: read, to report it
    assert reads == ["AIGatewayRoute/r"]
    c.drop(kube.AI_GATEWAY_ROUTE, obj(kube.AI_GATEWAY_ROUTE, "r", "3"))
    assert cached.get(kube.AI_GATEWAY_ROUTE, "llm", "r") is None and reads == ["AIGatewayRoute/r"]


def test_a_kind_cached_only_when_ours_keeps_a_child_that_lost_our_labels_and_forgets_what_is_not_ours() -> None:
    c = caches()
    owner_ref = {"apiVersion": "modeltraffic.io/v1alpha1", "kind": "VirtualModel", "name": "m", "uid": "u",
                 "controller": True}
    labelled = obj(kube.AI_GATEWAY_ROUTE, "m", "1", labels={"app.kubernetes.io/managed-by": "model-traffic-operator"})
    c.put(kube.AI_GATEWAY_ROUTE, labelled)
    stripped = obj(kube.AI_GATEWAY_ROUTE, "m", "2", spec={"edited": True})
    stripped["metadata"]["ownerReferences"] = [owner_ref]  # labels removed by hand: still ours by owner reference
    c.put(kube.AI_GATEWAY_ROUTE, stripped)
    assert c.get(kube.AI_GATEWAY_ROUTE, "llm", "m")["spec"] == {"edited": True}  # type: ignore[index]
    c.put(kube.AI_GATEWAY_ROUTE, obj(kube.AI_GATEWAY_ROUTE, "m", "3"))  # neither labels nor owner: not ours
    assert c.get(kube.AI_GATEWAY_ROUTE, "llm", "m") is None
    c.put(kube.AI_GATEWAY_ROUTE, obj(kube.AI_GATEWAY_ROUTE, "someone-elses", "4"))
    assert c.size() == 0


def test_objects_are_selected_by_labels_before_they_are_copied() -> None:
    c = caches()
    c.put(kube.BACKEND, obj(kube.BACKEND, "a", "1", labels={"tc": "one"}))
    c.put(kube.BACKEND, obj(kube.BACKEND, "b", "2", labels={"tc": "two"}))
    c.put(kube.BACKEND, obj(kube.BACKEND, "c", "3", namespace="other", labels={"tc": "one"}))
    assert [o["metadata"]["name"] for o in c.objects(kube.BACKEND, "llm", "tc=one")] == ["a"]
    assert sorted(o["metadata"]["name"] for o in c.objects(kube.BACKEND, None, "tc=one")) == ["a", "c"]
    assert len(c.objects(kube.BACKEND)) == 3



def test_children_are_found_by_their_controllers_uid_and_follow_changes() -> None:
    c = caches()

    def child(name: str, rv: str, uid: str | None, namespace: str = "llm") -> dict[str, Any]:
        body = obj(kube.BACKEND, name, rv, namespace=namespace)
        if uid:
            body["metadata"]["ownerReferences"] = [{"apiVersion": "modeltraffic.io/v1alpha1", "kind": "TrafficConfig",
                                                    "name": "t", "uid": uid, "controller": True}]
        return body

    c.put(kube.BACKEND, child("a", "1", "u1"))
    c.put(kube.BACKEND, child("b", "2", "u1"))
    c.put(kube.BACKEND, child("c", "3", "u2"))
    c.put(kube.BACKEND, child("d", "4", "u1", namespace="other"))
    assert [o["metadata"]["name"] for o in c.controlled_by(kube.BACKEND, "llm", "u1")] == ["a", "b"]
    c.put(kube.BACKEND, child("b", "5", None))  # released
    c.drop(kube.BACKEND, child("a", "6", "u1"))
    assert c.controlled_by(kube.BACKEND, "llm", "u1") == []
    assert [o["metadata"]["name"] for o in c.controlled_by(kube.BACKEND, "other", "u1")] == ["d"]


def test_kubectls_last_applied_copy_is_not_kept() -> None:
    body = obj(kube.BACKEND, "b", "1", spec={"x": 1})
    body["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": "{...}", "keep": "me"}
    assert project(kube.BACKEND, body)["metadata"]["annotations"] == {"keep": "me"}
    assert "kubectl.kubernetes.io/last-applied-configuration" in body["metadata"]["annotations"]  # not changed


def test_long_condition_messages_of_other_controllers_are_cut_ours_kept_whole() -> None:
    overlap = "Overlapping match conditions with route(s): " + ", ".join(f"HTTPRoute bench/m{i}" for i in range(2000))
    route = obj(kube.HTTP_ROUTE, "m0", "1")
    route["status"] = {"parents": [{"parentRef": {"name": "gw"}, "conditions": [
        {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "Route is accepted"},
        {"type": "RouteRulesOverlap", "status": "True", "reason": "RouteRulesOverlap", "message": overlap}]}]}
    kept = project(kube.HTTP_ROUTE, route)["status"]["parents"][0]["conditions"]
    assert kept[0]["message"] == "Route is accepted"
    assert kept[1]["message"] == overlap[:CONDITION_MESSAGE_KEPT] and kept[1]["reason"] == "RouteRulesOverlap"
    assert route["status"]["parents"][0]["conditions"][1]["message"] == overlap  # the watched object is not changed
    backend = obj(kube.AI_SERVICE_BACKEND, "b", "1")
    backend["status"] = {"conditions": [{"type": "NotAccepted", "status": "True", "message": "x" * 5000}]}
    kept_message = project(kube.AI_SERVICE_BACKEND, backend)["status"]["conditions"][0]["message"]
    assert len(kept_message) == CONDITION_MESSAGE_KEPT
    # Our own status is kept as written: the next status write is computed against it.
    ours = obj(kube.VIRTUAL_MODEL, "m0", "1")
    ours["status"] = {"conditions": [{"type": "Ready", "status": "False", "message": "y" * 5000}]}
    assert project(kube.VIRTUAL_MODEL, ours)["status"] == ours["status"]


def test_versions_cover_ours_and_the_names_of_the_others() -> None:
    """What a relist compares with: every object the watch saw, of a label-filtered kind too."""
    c = caches()
    c.put(kube.AI_GATEWAY_ROUTE, obj(kube.AI_GATEWAY_ROUTE, "ours", "1",
                                     labels={"app.kubernetes.io/managed-by": "model-traffic-operator"}))
    c.put(kube.AI_GATEWAY_ROUTE, obj(kube.AI_GATEWAY_ROUTE, "theirs", "2"))
    c.put(kube.AI_GATEWAY_ROUTE, obj(kube.AI_GATEWAY_ROUTE, "elsewhere", "3", namespace="other"))
    assert c.versions(kube.AI_GATEWAY_ROUTE, "llm") == {("llm", "ours"): "1", ("llm", "theirs"): "2"}
    assert len(c.versions(kube.AI_GATEWAY_ROUTE)) == 3
    assert c.size() == 1
