"""Errors of the kubectl plugin: every message says what went wrong and what to do next."""

from __future__ import annotations

import re

# The API server's words for an RBAC denial and for a ValidatingAdmissionPolicy's.
_RBAC = re.compile(r'User "(?P<user>[^"]*)" cannot (?P<verb>[\w-]+) resource "(?P<res>[^"]+)"'
                   r'(?: in API group "(?P<group>[^"]*)")?(?: in the namespace "(?P<ns>[^"]+)")?')
_POLICY = re.compile(r"ValidatingAdmissionPolicy '(?P<policy>[^']+)' with binding "
                     r"'(?P<binding>[^']+)' denied request: (?P<why>.*)", re.S)


class CliError(Exception):
    """A user-facing error; ``str(e)`` is printed as ``error: <message>`` with exit code 1."""


def api_error_message(status: int, detail: str, *, verb: str, namespace: str | None,
                      name: str | None = None, server: str = "") -> str:
    """A Kubernetes API error (HTTP status + the server's message) in plain words.

    ``verb`` is what the plugin tried, e.g. ``"create"``, ``"list"``, ``"patch"``.
    """
    where = f"in namespace {namespace}" if namespace else "in all namespaces"
    target = f"FineTuneJob {name}" if name else "FineTuneJobs"
    ns_flag = f" -n {namespace}" if namespace else ""
    detail = detail.strip()
    if status == 401:
        return (f"the API server{_at(server)} rejected the credentials: "
                f"{detail or 'Unauthorized'}; refresh them or pick another --context or "
                "--kubeconfig")
    if status == 403:
        return forbidden_message(detail, verb=verb, target=target, namespace=namespace)
    if status == 404 and name:
        return (f"FineTuneJob {name} not found in namespace {namespace}; "
                f"list them with kubectl finetune list{ns_flag}")
    if status == 404:
        return (f"the FineTuneJob API (finetune.dev/v1alpha1) is not served{_at(server)}: "
                f"{detail or 'Not Found'}; install the finetune-operator chart (docs/install.md) "
                "or check --context")
    if status == 409:
        return (f"FineTuneJob {name} already exists in namespace {namespace}; pick another --name "
                f"or delete it first (kubectl delete finetunejob {name}{ns_flag})")
    if status == 422:
        what = f"FineTuneJob {name}" if name else "the FineTuneJob"
        return f"the API server rejected {what}: {detail}; fix the field it names"
    return f"{verb} {target} {where} failed: HTTP {status}: {detail}"


def _at(server: str) -> str:
    return f" at {server}" if server else ""


def forbidden_message(detail: str, *, verb: str, target: str, namespace: str | None) -> str:
    """A 403 in plain words: which admission policy denied what (a role does not help then),
    or which permission (verb, resource, namespace) the user lacks and which role grants it."""
    detail = detail.strip()
    policy = _POLICY.search(detail)
    if policy:
        return (f"the cluster's admission policy {policy['policy']} (binding "
                f"{policy['binding']}) denied {verb} {target}: {policy['why'].strip()}; this is "
                "a rule of the finetune-operator chart's policy values, not a missing role: "
                "change what it names, or ask your platform team to allow it (docs/install.md, "
                "policy values)")
    where = f"in namespace {namespace}" if namespace else "in all namespaces"
    rbac = _RBAC.search(detail)
    if rbac:
        res = rbac["res"] + (f".{rbac['group']}" if rbac["group"] else "")
        scope = (f"in namespace {rbac['ns']}" if rbac["ns"]
                 else "cluster-wide" if namespace is None else where)
        lacks = f"{rbac['user']} may not {rbac['verb']} {res} {scope}"
    else:
        lacks = f"not allowed to {verb} {target} {where}: {detail or 'Forbidden'}"
    if namespace is None:
        return (f"{lacks}; list a single namespace with -n NAMESPACE instead of -A (every "
                "namespace needs a ClusterRoleBinding)")
    return (f"{lacks}; ask your platform team for a RoleBinding in namespace {namespace} to the "
            "finetune-operator user role (the chart's <release>-finetune-operator-edit "
            "ClusterRole grants every kubectl finetune command; docs/install.md)")
