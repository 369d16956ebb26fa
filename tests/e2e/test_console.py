"""The web console (docs/console.md) in a real browser: Debian's chromium driven by Selenium, on
the local control plane with the operator and a node agent whose trainers really train.

- A team member bound only to the chart's user role submits a LoRA job through the New job form:
  a field error from the API server's dry run is shown at its field; the job goes Queued with
  its reason (another job holds the namespace's one GPU), Running with progress and a loss
  chart whose points arrive over server-sent events (the page is never reloaded), is suspended
  and resumed from its page, and Succeeds with both attempts on the curve.
- Two users, each bound to one namespace, each see only their own jobs, and a direct request
  for the other's job is refused by the API server.
- The in-cluster mode (token): the console holds no credential at all, every call is made with
  the bearer token the proxy forwards, so it can do exactly what the user can; (impersonate):
  every call impersonates the user with all their groups (a user whose only grant comes from
  their second group sees exactly that namespace).

The tests take the screenshots docs/console.md shows (docs/console/*.png)."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from finetune_dev.devcluster.workloads import MODEL_PATH, training_job
from finetune_dev.nodeagent import AgentProcess
from tests.builders.e2e import RUN
from tests.builders.users import user_kubeconfig, user_role

from ..kube import Cluster, short_id, wait_for
from ..operator_proc import OperatorProcess, free_port, job_status

pytestmark = pytest.mark.e2e
__all__ = ["user_role"]  # the fixture, imported for this module's tests

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "console"
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
STEPS = 1200  # ~30 s on a quiet machine (~40 steps/s): Running stays on the page long enough to
# see loss points and press Suspend (at 60 steps the job ended before the page showed Running)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="Debian's chromium and chromium-driver are not installed (make system-deps)")


# ---------------------------------------------------------------- the console and the browser

class LocalConsole:
    """``kubectl finetune console`` as the user of ``kubeconfig``, in this process."""

    def __init__(self, kubeconfig: Path, namespace: str, history: Path) -> None:
        from finetune_operator.console.main import run_local

        self.out, self.ready, self.stop = io.StringIO(), threading.Event(), threading.Event()
        self.thread = threading.Thread(target=run_local, kwargs=dict(
            kubeconfig=str(kubeconfig), context=None, namespaces=[namespace], port=0,
            open_browser=False, out=self.out, history_dir=history, ready=self.ready,
            stop=self.stop), daemon=True)
        self.thread.start()
        assert self.ready.wait(60), f"the console did not start: {self.out.getvalue()}"
        m = re.search(r"(http://127\.0\.0\.1:\d+)(/login\?token=\S+)", self.out.getvalue())
        assert m, self.out.getvalue()
        self.base, self.login = m.group(1), m.group(1) + m.group(2)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def browser(lang: str = "en-US"):  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1100", f"--lang={lang}"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"intl.accept_languages": lang})
    return webdriver.Chrome(options=opts, service=Service(str(DRIVER)))


@pytest.fixture
def chrome() -> Iterator[object]:
    driver = browser()
    yield driver
    driver.quit()


def shot(driver, name: str) -> None:  # type: ignore[no-untyped-def]
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def until(driver, what: str, fn: Callable[[], object], timeout: float = 60):  # type: ignore[no-untyped-def]
    """Poll the page until ``fn`` is truthy (its value); on time-out, fail with the page's
    text."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def probe(_: object) -> object:
        try:
            return fn()
        except (StaleElementReferenceException, WebDriverException):
            return None
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25).until(probe)
    except Exception as e:
        body = driver.find_element("tag name", "body").text[:3000]
        raise AssertionError(f"timed out waiting for {what}; the page shows:\n{body}") from e


def by_id(driver, ident: str):  # type: ignore[no-untyped-def]
    return driver.find_element("id", ident)


def click(driver, ident: str) -> None:  # type: ignore[no-untyped-def]
    """Click a button of the live part (which the server's events may replace meanwhile)."""
    until(driver, f"a click on {ident}", lambda: by_id(driver, ident).click() or True)


def fill(driver, values: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.support.ui import Select

    for name, value in values.items():
        el = by_id(driver, name)
        if el.tag_name == "select":
            Select(el).select_by_value(value)
        else:
            el.clear()
            el.send_keys(value)


def phase_shown(driver) -> str:  # type: ignore[no-untyped-def]
    return str(by_id(driver, "phase").get_attribute("data-phase"))


def chart_points(driver) -> int:  # type: ignore[no-untyped-def]
    return int(by_id(driver, "loss-chart").get_attribute("data-points") or 0)


def tenant(cluster: Cluster, ns: str, name: str, role: str, tmp: Path) -> Path:
    """A token user bound to the chart's user role in ``ns`` only (and, as the built-in edit
    role would, allowed to create ConfigMaps there for uploaded datasets)."""
    cluster.kubectl("create", "rolebinding", f"{name}-team", "-n", ns, f"--clusterrole={role}",
                    f"--serviceaccount={ns}:{name}")
    cluster.kubectl("create", "role", f"{name}-data", "-n", ns, "--verb=create",
                    "--resource=configmaps")
    cluster.kubectl("create", "rolebinding", f"{name}-data", "-n", ns, f"--role={name}-data",
                    f"--serviceaccount={ns}:{name}")
    me = user_kubeconfig(cluster, ns, name, tmp / f"{name}.yaml")
    wait_for(f"RBAC to grant {name} the role", lambda: cluster.kubectl(
        "auth", "can-i", "create", "configmaps", "-n", ns,
        f"--as=system:serviceaccount:{ns}:{name}", check=False).stdout.strip() == "yes", 30)
    return me


def extra_spec(node: str) -> str:
    """The spec fields beyond the form's, as a user pastes them: the tiny model's settings of
    docs/local-cluster.md, pinned to the node agent."""
    job = training_job("x", gpus=1, priority_class="finetune-normal", node=node,
                       max_steps=STEPS, interval_steps=20)["spec"]
    return yaml.safe_dump({
        "dataset": {"cutoffLen": 128},
        "lora": {"alpha": 16, "dropout": 0.0, "targetModules": ["all-linear"]},
        "training": {k: job["training"][k] for k in ("batchSize", "lrScheduler", "precision",
                                                     "seed")},
        "resources": {k: job["resources"][k] for k in ("cpu", "memory", "nodeSelector")},
        "checkpoint": job["checkpoint"]})


# ---------------------------------------------------------------- the tests

@needs_chromium
def test_submit_queue_run_suspend_resume_succeed_in_the_browser(
        cluster: Cluster, operator: OperatorProcess, agent: AgentProcess,
        train_ns: Callable[..., str], user_role: str, chrome, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ns = train_ns(gpu_quota=1)
    me = tenant(cluster, ns, "alice", user_role, tmp_path)
    # another job of the team holds the namespace's one GPU, so the new one must queue
    cluster.apply(training_job("hog", gpus=1, priority_class="finetune-normal", node=agent.node,
                               max_steps=100000), ns)
    wait_for("hog running", lambda: job_status(cluster, ns, "hog").get("phase") == "Running",
             RUN)
    console = LocalConsole(me, ns, tmp_path / "history")
    try:
        chrome.get(console.login)
        until(chrome, "My jobs with hog", lambda: by_id(chrome, f"row-{ns}-hog"))
        chrome.get(console.base + "/new")
        values = {"name": "support-bot", "model_pvc": f"models:{MODEL_PATH}",
                  "dataset_cm": "data:train.jsonl", "format": "messages", "method": "lora",
                  "lora_rank": "8", "learning_rate": "0.001", "max_steps": str(STEPS),
                  "gpus": "65", "band": "finetune-normal", "extra": extra_spec(agent.node)}
        fill(chrome, values)
        click(chrome, "btn-check")
        err = until(chrome, "the API server's error at the GPUs field",
                    lambda: by_id(chrome, "err-gpus").text)
        assert "spec.resources.gpus" in err and "64" in err, err
        assert not chrome.find_elements("id", "err-name")  # the other fields are fine
        chrome.execute_script("arguments[0].scrollIntoView({block: 'center'})",
                              by_id(chrome, "fld-gpus"))
        shot(chrome, "new-job-field-error")
        assert cluster.get("finetunejob", "support-bot", ns) is None  # a dry run stores nothing
        fill(chrome, {"gpus": "1"})
        click(chrome, "btn-submit")
        until(chrome, "the job page", lambda: "/jobs/" in chrome.current_url
              and by_id(chrome, "phase"))
        until(chrome, "Queued", lambda: phase_shown(chrome) == "Queued", RUN)
        reason = until(chrome, "the reason it waits", lambda: by_id(chrome, "reason").text)
        stored = job_status(cluster, ns, "support-bot")["queue"]["reason"]
        assert reason == stored, (reason, stored)
        chrome.get(console.base + "/")
        phase, why = until(chrome, "the queued row", lambda: (lambda row: (
            row.get_attribute("data-phase"), row.find_element("class name", "reason").text))(
            by_id(chrome, f"row-{ns}-support-bot")))
        assert (phase, why) == ("Queued", stored)
        shot(chrome, "my-jobs-queued")
        # the team member deletes the hog from its page: the new job is admitted
        chrome.get(f"{console.base}/jobs/{ns}/hog")
        click(chrome, "btn-delete")
        chrome.switch_to.alert.accept()
        until(chrome, "back on My jobs", lambda: "deleted=hog" in chrome.current_url)
        chrome.get(f"{console.base}/jobs/{ns}/support-bot")
        # from here on the page is never reloaded: the server-sent events bring every change
        until(chrome, "Running with loss points", lambda: phase_shown(chrome) == "Running"
              and chart_points(chrome) >= 2, RUN)
        assert re.search(rf"\d+/{STEPS}", by_id(chrome, "progress").text)
        shot(chrome, "job-running")
        click(chrome, "btn-suspend")
        until(chrome, "Suspended", lambda: phase_shown(chrome) == "Suspended", RUN)
        wait_for("the checkpoint saved on the way out", lambda: (job_status(
            cluster, ns, "support-bot").get("checkpoint") or {}).get("step"), RUN)
        shot(chrome, "job-suspended")
        click(chrome, "btn-resume")
        until(chrome, "Succeeded", lambda: phase_shown(chrome) == "Succeeded", RUN)
        # the actions follow the phase on the live page too: nothing to suspend any more
        until(chrome, "no Suspend button", lambda: not chrome.find_elements("id", "btn-suspend")
              and chrome.find_elements("id", "btn-clone"))
        st = job_status(cluster, ns, "support-bot")
        assert (st["attempt"], st["preemptions"], st["failures"]) == (2, 0, 0), st
        attempts = chrome.find_elements("css selector", "#timeline li.attempt")
        assert len(attempts) == 2, by_id(chrome, "timeline").text
        assert chrome.find_elements("css selector", "#loss-chart circle.s1")  # attempt 2's line
        assert "support-bot" in by_id(chrome, "output").text
        shot(chrome, "job-succeeded")
        chrome.get(console.base + "/team")
        until(chrome, "the quota row", lambda: ns in by_id(chrome, "quotas").text)
        shot(chrome, "team")
        zh = browser("zh-CN")
        try:
            zh.get(console.login)
            until(zh, "My jobs in Chinese", lambda: "我的任务" in zh.find_element(
                "tag name", "header").text)
            zh.get(f"{console.base}/jobs/{ns}/support-bot")
            until(zh, "the phase in Chinese", lambda: by_id(zh, "phase").text == "已成功")
            shot(zh, "job-succeeded-zh")
        finally:
            zh.quit()
    finally:
        console.close()


@needs_chromium
def test_the_sweeps_page_ranks_real_trials_and_marks_the_best(
        cluster: Cluster, operator: OperatorProcess, agent: AgentProcess,
        train_ns: Callable[..., str], user_role: str, chrome, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ns = train_ns(gpu_quota=1)
    me = tenant(cluster, ns, "carol", user_role, tmp_path)
    template = training_job("x", gpus=1, priority_class="finetune-normal", node=agent.node,
                            max_steps=10, interval_steps=10)["spec"]
    cluster.apply({"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneSweep",
                   "metadata": {"name": "lr"},
                   "spec": {"template": template, "maxParallel": 1,
                            "parameters": [{"path": "training.learningRate",
                                            "values": [1.0e-4, 3.0e-3]}],
                            "search": {"strategy": "grid"},
                            "objective": {"metric": "trainLoss"}}}, ns)
    wait_for("the sweep to succeed", lambda: ((cluster.get("finetunesweep", "lr", ns) or {})
                                              .get("status") or {}).get("phase") == "Succeeded",
             2 * RUN)
    best = (cluster.get("finetunesweep", "lr", ns) or {})["status"]["best"]["name"]
    console = LocalConsole(me, ns, tmp_path / "history")
    try:
        chrome.get(console.login)
        chrome.get(console.base + "/sweeps")
        rows = until(chrome, "the trials", lambda: [r.text for r in chrome.find_elements(
            "css selector", "table.trials tbody tr")])
        assert len(rows) == 2 and rows[0].startswith("1 ") and best in rows[0], rows
        marked = chrome.find_elements("css selector", "table.trials tr.best")
        assert len(marked) == 1 and best in marked[0].text
        (point,) = chrome.find_elements("css selector", "svg.scatter circle.best")
        assert point.get_attribute("data-trial") == best
        assert len(chrome.find_elements("css selector", "svg.scatter circle")) == 2
        shot(chrome, "sweeps")
    finally:
        console.close()


@needs_chromium
def test_two_users_each_see_only_their_own_namespace(
        cluster: Cluster, crd_installed: Path, user_role: str, chrome, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    users = {}
    for who in ("alice", "bob"):
        ns = cluster.create_namespace(f"con-{who}-{short_id()}")
        job = training_job(f"{who}-job", gpus=1, priority_class="finetune-normal",
                           node="nowhere", max_steps=10, suspend=True)
        cluster.apply(job, ns)
        users[who] = (ns, tenant(cluster, ns, who, user_role, tmp_path))
    for who, other in (("alice", "bob"), ("bob", "alice")):
        ns, me = users[who]
        theirs = users[other][0]
        console = LocalConsole(me, ns, tmp_path / f"history-{who}")
        try:
            chrome.get(console.login)
            rows = until(chrome, f"{who}'s rows", lambda: [r.get_attribute("id") for r in (
                chrome.find_elements("css selector", "#rows tr"))])
            assert rows == [f"row-{ns}-{who}-job"]
            assert other not in chrome.find_element("tag name", "main").text
            chrome.get(f"{console.base}/?ns={theirs}")  # asking for the other namespace
            assert not chrome.find_elements("css selector", "#rows tr")
            chrome.get(f"{console.base}/jobs/{theirs}/{other}-job")
            refusal = until(chrome, "the refusal", lambda: by_id(chrome, "error").text)
            assert "HTTP 403" in chrome.find_element("tag name", "h1").text
            assert "forbidden" in refusal and f"system:serviceaccount:{ns}:{who}" in refusal
            if who == "alice":
                shot(chrome, "refused")
            # the same without a browser: the session cookie alone does not open another's job
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(f"{console.base}/jobs/{theirs}/{other}-job", timeout=10)
            assert e.value.code == 401  # no session cookie: nobody else on this machine
        finally:
            console.close()


def test_in_cluster_token_mode_holds_no_power_of_its_own(
        cluster: Cluster, crd_installed: Path, user_role: str, tmp_path: Path) -> None:
    """``--mode token`` with a kubeconfig that has the API server and its CA but no credential:
    every answer it gives comes from the forwarded token."""
    ns_a = cluster.create_namespace(f"con-in-a-{short_id()}")
    ns_b = cluster.create_namespace(f"con-in-b-{short_id()}")
    for ns in (ns_a, ns_b):
        cluster.apply(training_job(f"job-{ns}", gpus=1, priority_class="finetune-normal",
                                   node="nowhere", max_steps=10, suspend=True), ns)
    alice = yaml.safe_load(tenant(cluster, ns_a, "alice", user_role, tmp_path).read_text())
    token = alice["users"][0]["user"]["token"]
    bare = dict(alice, users=[{"name": "alice", "user": {}}])  # server and CA, no credential
    (tmp_path / "bare.yaml").write_text(yaml.safe_dump(bare))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "finetune_operator.console", "--mode", "token", "--host",
         "127.0.0.1", "--port", str(port), "--kubeconfig", str(tmp_path / "bare.yaml"),
         "--state-dir", str(tmp_path / "state"), "--namespace", ns_a, "--namespace", ns_b],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"

    def get(path: str, bearer: str | None) -> tuple[int, str]:
        headers = {"X-Forwarded-Access-Token": bearer} if bearer else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers),
                                        timeout=20) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    try:
        wait_for("the console answers", lambda: _answers(base + "/healthz"), 60)
        code, body = get("/", token)
        assert code == 200 and f"job-{ns_a}" in body and f"job-{ns_b}" not in body, body[:2000]
        code, body = get(f"/jobs/{ns_b}/job-{ns_b}", token)
        assert code == 403 and "forbidden" in body, body[:2000]
        code, body = get(f"/jobs/{ns_a}/job-{ns_a}", token)
        assert code == 200 and f"job-{ns_a}" in body
        code, body = get("/", None)  # no token: nothing, not even an empty list
        assert code == 401 and f"job-{ns_a}" not in body
        code, body = get("/", "not-a-token")
        assert code in (401, 403) and f"job-{ns_a}" not in body, (code, body[:500])
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
    assert "not in this client's surface" not in out, out[-3000:]


def test_in_cluster_impersonate_mode_acts_only_as_the_user(
        cluster: Cluster, crd_installed: Path, user_role: str, tmp_path: Path) -> None:
    """``--mode impersonate`` on a ServiceAccount bound to exactly the chart's console role
    (impersonate users and groups, create SubjectAccessReviews): it cannot read a job itself,
    shows a user what their RBAC allows, and refuses a user with no grant."""
    from tests.builders.chart import one as one_of
    from tests.builders.chart import render

    ns_a = cluster.create_namespace(f"con-im-a-{short_id()}")
    ns_b = cluster.create_namespace(f"con-im-b-{short_id()}")
    for ns in (ns_a, ns_b):
        cluster.apply(training_job(f"job-{ns}", gpus=1, priority_class="finetune-normal",
                                   node="nowhere", max_steps=10, suspend=True), ns)
    user = f"ann-{short_id()}@example.com"  # a person, as the proxy names them
    cluster.kubectl("create", "rolebinding", "ann", "-n", ns_a, f"--clusterrole={user_role}",
                    f"--user={user}")
    # a second person whose only grant is to the second of their groups
    ben, reviewers = f"ben-{short_id()}@example.com", f"ml-reviewers-{short_id()}"
    ben_groups = f"everyone-{short_id()},{reviewers}"
    cluster.kubectl("create", "rolebinding", "reviewers", "-n", ns_b,
                    f"--clusterrole={user_role}", f"--group={reviewers}")
    wait_for("RBAC to grant the second group", lambda: cluster.kubectl(
        "auth", "can-i", "list", "finetunejobs", "-n", ns_b, f"--as={ben}",
        f"--as-group={reviewers}", check=False).stdout.strip() == "yes")
    docs = render({"console": {"enabled": True, "mode": "impersonate",
                               "proxy": {"sidecars": [{"name": "proxy", "image": "p"}]}}})
    role = one_of(docs, "ClusterRole", "finetune-operator-console-impersonate")
    role["metadata"] = {"name": f"ft-console-{short_id()}"}
    cluster.apply(role)
    sa_ns = cluster.create_namespace(f"con-im-sys-{short_id()}")
    cluster.kubectl("create", "clusterrolebinding", role["metadata"]["name"],
                    f"--clusterrole={role['metadata']['name']}",
                    f"--serviceaccount={sa_ns}:console")
    console_kubeconfig = user_kubeconfig(cluster, sa_ns, "console", tmp_path / "console.yaml")
    as_console = f"--as=system:serviceaccount:{sa_ns}:console"
    wait_for("RBAC to grant the console impersonation", lambda: cluster.kubectl(
        "auth", "can-i", "impersonate", "users", as_console, check=False).stdout.strip() == "yes")
    for ns in (ns_a, ns_b):  # the console's own identity reads nothing
        assert cluster.kubectl("auth", "can-i", "get", "finetunejobs", "-n", ns, as_console,
                               check=False).stdout.strip() == "no"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "finetune_operator.console", "--mode", "impersonate", "--host",
         "127.0.0.1", "--port", str(port), "--kubeconfig", str(console_kubeconfig),
         "--state-dir", str(tmp_path / "state"), "--namespace", ns_a, "--namespace", ns_b],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"

    def get(path: str, who: str | None, groups: str = "") -> tuple[int, str]:
        headers = {"X-Forwarded-User": who, "X-Forwarded-Groups": groups} if who else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers),
                                        timeout=20) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    try:
        wait_for("the console answers", lambda: _answers(base + "/healthz"), 60)
        code, body = get("/", user)
        assert code == 200 and f"job-{ns_a}" in body and f"job-{ns_b}" not in body, body[:2000]
        assert f"Signed in as {user}" in body
        code, body = get(f"/jobs/{ns_b}/job-{ns_b}", user)
        assert code == 403 and "forbidden" in body, body[:2000]
        # every group is impersonated: ben sees ns_b through his second group, and only it
        code, body = get("/", ben, ben_groups)
        assert code == 200 and f"job-{ns_b}" in body and f"job-{ns_a}" not in body, body[:2000]
        code, body = get(f"/jobs/{ns_b}/job-{ns_b}", ben, ben_groups)
        assert code == 200 and f"job-{ns_b}" in body, body[:2000]
        code, body = get(f"/jobs/{ns_a}/job-{ns_a}", ben, ben_groups)
        assert code == 403 and "forbidden" in body, body[:2000]
        code, body = get("/", f"nobody-{short_id()}@example.com", "system:masters")
        assert code == 403 and "SubjectAccessReview" in body, body[:1000]
        assert get("/", None)[0] == 401
        assert get("/", "system:admin")[0] == 401  # never a system: identity
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
    assert "not in this client's surface" not in out, out[-3000:]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False
