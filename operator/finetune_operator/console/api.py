"""The console's calls to the Kubernetes API, all through ``kube.client.Kube`` (the one module
that talks to the API) and all **as the user**: ``kubectl finetune console`` builds the client
from the user's kubeconfig; the chart's in-cluster mode builds one per request from the bearer
token the authenticating proxy forwards, or with ``Impersonate-User`` headers after the API
server's SubjectAccessReview allowed the console to impersonate (``identity.py``). So the API
server's RBAC and admission decide every read and write, and a refusal is shown in its words.

Every (verb, resource) used here is ``kube.client.CONSOLE_SURFACE``."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from kubernetes.client.exceptions import ApiException

from finetune_api import GROUP, PLURAL, VERSION
from finetune_api.sweep import SWEEP_PLURAL
from finetune_operator.console.model import BAND_ORDER, band_key
from finetune_operator.kube.client import (
    JOBS_PATH,
    MERGE_PATCH,
    Kube,
    collection_path,
    object_path,
)

log = logging.getLogger(__name__)

_JOBS = f"/apis/{GROUP}/{VERSION}"


def status_of(e: ApiException) -> dict[str, Any]:
    """The API server's ``Status`` of a refusal ({} when the body is not one)."""
    try:
        body = json.loads(e.body or "{}")
    except (ValueError, TypeError):
        return {"message": str(e.body or e.reason or "")[:500]}
    return body if isinstance(body, dict) else {}


class ConsoleApi:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    # ------------------------------------------------------------ who, and what they may do

    def who(self) -> str:
        """The user's name as the API server sees it (SelfSubjectReview); "" if unknown."""
        try:
            res = self.kube.call("create", "selfsubjectreviews", "POST",
                                 "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                 body={"apiVersion": "authentication.k8s.io/v1",
                                       "kind": "SelfSubjectReview"})
        except ApiException:
            return ""
        return str(((res.get("status") or {}).get("userInfo") or {}).get("username") or "")

    def may(self, verb: str, resource: str, namespace: str | None = None,
            group: str = GROUP) -> bool:
        """SelfSubjectAccessReview: whether the user may ``verb resource`` there."""
        attrs: dict[str, Any] = {"verb": verb, "resource": resource, "group": group}
        if namespace:
            attrs["namespace"] = namespace
        try:
            res = self.kube.call("create", "selfsubjectaccessreviews", "POST",
                                 "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                                 body={"apiVersion": "authorization.k8s.io/v1",
                                       "kind": "SelfSubjectAccessReview",
                                       "spec": {"resourceAttributes": attrs}})
        except ApiException as e:
            if e.status == 401:  # not authenticated: the caller's answer is a 401, not "no"
                raise
            return False
        return bool((res.get("status") or {}).get("allowed"))

    def namespaces(self, given: list[str], limit: int = 50) -> list[str]:
        """The namespaces the user may list FineTuneJobs in: ``given`` (checked), else every
        namespace they may list and read jobs in (at most ``limit`` reviews)."""
        if given:
            return [ns for ns in given if self.may("list", PLURAL, ns)]
        if not self.may("list", "namespaces", group=""):
            return []
        try:
            res = self.kube.call("list", "namespaces", "GET", "/api/v1/namespaces")
        except ApiException:
            return []
        names = sorted(str((n.get("metadata") or {}).get("name")) for n in res.get("items") or [])
        return [ns for ns in names[:limit] if self.may("list", PLURAL, ns)]

    # ------------------------------------------------------------ FineTuneJobs

    def list_jobs(self, namespace: str) -> tuple[list[dict[str, Any]], str]:
        return self.kube.list_raw(collection_path(JOBS_PATH, namespace))

    def watch_jobs(self, namespace: str, resource_version: str,
                   timeout_seconds: int = 240) -> Iterator[tuple[str, dict[str, Any]]]:
        return self.kube.watch_raw(collection_path(JOBS_PATH, namespace), resource_version,
                                   timeout_seconds=timeout_seconds)

    def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        res: dict[str, Any] = self.kube.call("get", PLURAL, "GET",
                                             object_path("FineTuneJob", namespace, name))
        return res

    def create_job(self, manifest: dict[str, Any], dry_run: bool) -> dict[str, Any]:
        ns = manifest["metadata"]["namespace"]
        res: dict[str, Any] = self.kube.call(
            "create", PLURAL, "POST", object_path("FineTuneJob", ns),
            [("dryRun", "All")] if dry_run else None, manifest)
        return res

    def patch_spec(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        res: dict[str, Any] = self.kube.call(
            "patch", PLURAL, "PATCH", object_path("FineTuneJob", namespace, name),
            body={"spec": spec}, content_type=MERGE_PATCH)
        return res

    def delete_job(self, namespace: str, name: str) -> None:
        self.kube.call("delete", PLURAL, "DELETE", object_path("FineTuneJob", namespace, name),
                       body={"propagationPolicy": "Background"})

    def events(self, namespace: str, job: str) -> list[dict[str, Any]]:
        """The job's events and its pods' (pods are named after the job)."""
        res = self.kube.call("list", "events", "GET",
                             f"/api/v1/namespaces/{quote(namespace)}/events", [("limit", 500)])
        out = []
        for e in res.get("items") or []:
            obj = e.get("involvedObject") or {}
            name = str(obj.get("name") or "")
            if (obj.get("kind") == "FineTuneJob" and name == job) or (
                    obj.get("kind") == "Pod" and name.startswith(job + "-")):
                out.append(e)
        return out

    def quotas(self, namespace: str) -> list[dict[str, Any]]:
        try:
            res = self.kube.call("list", "resourcequotas", "GET",
                                 f"/api/v1/namespaces/{quote(namespace)}/resourcequotas")
        except ApiException as e:
            if e.status == 403:  # quotas the user cannot see are not shown
                return []
            raise
        return list(res.get("items") or [])

    # ------------------------------------------------------------ sweeps

    def list_sweeps(self, namespace: str) -> list[dict[str, Any]]:
        res = self.kube.call("list", SWEEP_PLURAL, "GET",
                             f"{_JOBS}/namespaces/{quote(namespace)}/{SWEEP_PLURAL}")
        return list(res.get("items") or [])

    def get_sweep(self, namespace: str, name: str) -> dict[str, Any]:
        res: dict[str, Any] = self.kube.call(
            "get", SWEEP_PLURAL, "GET",
            f"{_JOBS}/namespaces/{quote(namespace)}/{SWEEP_PLURAL}/{quote(name)}")
        return res

    # ------------------------------------------------------------ the New job form

    def create_configmap(self, body: dict[str, Any], dry_run: bool) -> dict[str, Any]:
        ns = body["metadata"]["namespace"]
        res: dict[str, Any] = self.kube.call(
            "create", "ConfigMap", "POST", object_path("ConfigMap", ns),
            [("dryRun", "All")] if dry_run else None, body)
        return res

    def candidate_bands(self) -> list[str]:
        """The fine-tuning PriorityClasses (``finetune-*``) when the user may list them, most
        urgent first, else the chart's default bands."""
        try:
            res = self.kube.call("list", "priorityclasses", "GET",
                                 "/apis/scheduling.k8s.io/v1/priorityclasses")
        except ApiException:
            return list(BAND_ORDER)
        names = [str((c.get("metadata") or {}).get("name")) for c in res.get("items") or []]
        mine = sorted((n for n in names if n.startswith("finetune-")), key=band_key)
        return mine or list(BAND_ORDER)

    def allowed_bands(self, namespace: str) -> list[str]:
        """The bands this namespace may use, as the API server's admission says: a dry-run
        create per band (nothing is stored); a band refused with a message naming
        ``priorityClassName`` is out, any other outcome leaves it in."""
        out = []
        for band in self.candidate_bands():
            probe = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob",
                     "metadata": {"generateName": "console-band-check-", "namespace": namespace},
                     "spec": {"model": {"name": "probe", "source": {"hub": {"repo": "probe"}}},
                              "dataset": {"source": {"configMap": {"name": "probe",
                                                                   "key": "probe"}}},
                              "method": "lora", "priorityClassName": band}}
            try:
                self.create_job(probe, dry_run=True)
            except ApiException as e:
                if "priorityClassName" in str(status_of(e).get("message", "")) or e.status == 403:
                    continue
            out.append(band)
        return out
