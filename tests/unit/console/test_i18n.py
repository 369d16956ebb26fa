"""The console's languages: the browser's preference picks English or Simplified Chinese, and
both catalogs say everything."""

from __future__ import annotations

import re

import pytest

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
