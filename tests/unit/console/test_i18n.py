"""The console's languages: the browser's preference picks English or Simplified Chinese, and
both catalogs say everything."""

from __future__ import annotations

import datetime as dt
import re
from html.parser import HTMLParser

import pytest

from finetune_operator.console import model, pages
from finetune_operator.console.history import Curve, Mark, Point
from finetune_operator.console.i18n import EN, ZH, language, text


@pytest.mark.parametrize(("header", "lang"), [
    (None, "en"), ("", "en"), ("en-US,en;q=0.9", "en"), ("zh-CN,zh;q=0.9,en;q=0.8", "zh"),
    ("zh", "zh"), ("zh-Hans-CN", "zh"), ("en;q=0.5,zh-CN;q=0.9", "zh"),
    ("zh-CN;q=0.2,en;q=0.8", "en"), ("zh-TW,en;q=0.5", "en"), ("fr-FR,de", "en"),
    ("fr-FR,zh-SG;q=0.7", "zh"), ("zh-CN;q=0", "en"), ("zh-CN;q=oops,en", "en"),
])
def test_the_language_follows_the_browser(header: str | None, lang: str) -> None:
    assert language(header) == lang


def test_both_catalogs_hold_the_same_keys_and_placeholders() -> None:
    assert set(EN) == set(ZH)
    for key in EN:
        assert set(re.findall(r"{(\w+)}", EN[key])) == set(re.findall(r"{(\w+)}", ZH[key])), key


def test_chinese_texts_are_chinese() -> None:
    assert text("zh", "nav.jobs") == "我的任务"
    assert text("zh", "phase.Succeeded") == "已成功"
    assert text("zh", "team.in_use", used=2, hard=4) == "已用 2 / 4 个 GPU"
    assert text("en", "team.in_use", used=2, hard=4) == "2 of 4 GPUs in use"
    untranslated = [k for k in ZH if ZH[k] == EN[k] and re.search(r"[a-z]{4}", EN[k])
                    and k not in ("col.gpus",)]
    assert untranslated == []


# the words a Chinese page keeps as they are: product and format names, units, spec words
_KEPT = re.compile(r"\b(GPU|YAML|LoRA|QLoRA|Hub|ID|ConfigMap|KiB|JSON|Lines|URI|spec|claim|path|"
                   r"name|key|Qwen/Qwen2\.5-0\.5B-Instruct|HTTP|Prometheus|evalDataset|dataset|model)\b")


class _Labels(HTMLParser):
    """The texts of a page's labels: headings, field names, column heads, buttons, links."""

    TAGS = ("h2", "h3", "dt", "th", "label", "button", "a", "title", "p", "li")

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.texts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.TAGS:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self.open and self.open[-1] == tag:
            self.open.pop()

    def handle_data(self, data: str) -> None:
        if self.open and self.open[-1] in ("h2", "h3", "dt", "th", "label", "button"):
            self.texts.append(data.strip())


def _rich_job() -> dict[str, object]:
    """A job with every describe field: queued once, preempted, succeeded with output."""
    return {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": "bot", "namespace": "team-a", "uid": "u1",
                     "creationTimestamp": "2026-12-09T10:00:00Z"},
        "spec": {"model": {"name": "m", "source": {"hub": {"repo": "m"}}},
                 "dataset": {"source": {"configMap": {"name": "d", "key": "k"}}},
                 "method": "lora", "resources": {"gpus": 1, "gpuMemory": "20Gi"},
                 "priorityClassName": "finetune-normal", "training": {"maxSteps": 60}},
        "status": {"phase": "Succeeded", "attempt": 2, "preemptions": 1,
                   "startTime": "2026-12-09T10:01:00Z",
                   "completionTime": "2026-12-09T11:00:00Z",
                   "progress": {"step": 60, "totalSteps": 60, "loss": 0.8, "epoch": 1.0,
                                "tokensPerSecond": 100.0, "learningRate": 1e-4,
                                "updatedAt": "2026-12-09T11:00:00Z"},
                   "checkpoint": {"step": 60, "path": "checkpoints/checkpoint-60",
                                  "savedAt": "2026-12-09T11:00:00Z", "saveSeconds": 1.5},
                   "output": {"adapterPath": "output/adapter", "mergedPath": "",
                              "adapterUri": "s3://b/p/adapter/",
                              "metrics": {"evalLoss": 0.9, "trainLoss": 0.8}},
                   "sources": [{"source": "model", "uri": "hf://m", "revision": "abc"}],
                   "conditions": [{"type": "Succeeded", "status": "True",
                                   "reason": "Completed", "message": "done",
                                   "lastTransitionTime": "2026-12-09T11:00:00Z"}]}}


def test_no_english_label_is_left_on_the_chinese_job_page() -> None:
    now = dt.datetime(2026, 12, 9, 12, 0, tzinfo=dt.UTC)
    curve = Curve([Point(10, 1, 1.2, 1e-4, 90.0), Point(20, 2, 1.0, 1e-4, 95.0)],
                  [Mark("preemption", 10, 1), Mark("checkpoint", 10, 1)])
    for phase in ("Queued", "Running", "Succeeded"):
        job = _rich_job()
        job["status"]["phase"] = phase  # type: ignore[index]
        if phase == "Queued":
            job["status"]["queue"] = {"position": 1, "reason": "waiting for GPU quota"}  # type: ignore[index]
        page = model.job_page(job, [], now, curve, "zh", "prometheus")
        labels = [f["label"] for f in page["describe"]["spec"] + page["describe"]["status"]]
        english = [x for x in labels if re.search(r"[A-Za-z]{3,}", _KEPT.sub("", x))]
        assert english == [], english
        assert page["describe"]["status"][0]["value"] == text("zh", f"phase.{phase}")
        parser = _Labels()
        parser.feed(pages.job_html(page, "zh", "ann", "csrf"))
        left = [x for x in parser.texts if re.search(r"[A-Za-z]{3,}", _KEPT.sub("", x))]
        assert left == [], left
        for note in (page["evalNote"], page["source"]):
            assert not re.search(r"[A-Za-z]{3,}", _KEPT.sub("", note)), note
        # the English page of the same job has them in English
        en = model.job_page(job, [], now, curve, "en")
        assert [f["label"] for f in en["describe"]["status"]][:1] == ["Phase"]


def test_the_chinese_new_job_form_has_no_english_label() -> None:
    parser = _Labels()
    parser.feed(pages.new_html(values={}, errors={}, bands=["finetune-normal"],
                               namespaces=["team-a"], defaults={"method": "lora"},
                               preview=None, notice="", lang="zh", user="ann", csrf="c"))
    left = [x for x in parser.texts if re.search(r"[A-Za-z]{3,}", _KEPT.sub("", x))]
    assert left == [], left


def test_the_live_fragments_come_in_the_pages_language() -> None:
    """A page shown in Chinese by ``?lang=zh`` in an English browser: its server-sent events
    (which replace the live part) ask for Chinese too."""
    now = dt.datetime(2026, 12, 9, 12, 0, tzinfo=dt.UTC)
    page = model.job_page(_rich_job(), [], now, Curve(), "zh")
    html = pages.job_html(page, "zh", "ann", "csrf")
    assert 'data-events="/events/jobs/team-a/bot?lang=zh"' in html
    listing = pages.jobs_html([], ["team-a", "team-b"], "zh", "ann")
    assert 'data-events="/events/jobs?ns=team-a&amp;ns=team-b&amp;lang=zh"' in listing
