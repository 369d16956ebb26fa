"""HTML of the console's pages from the view models (``model.py``, ``forms.py``): plain string
templates, every value escaped here (``_e``); the charts come as SVG from ``charts.py``. One
stylesheet and one small script, inline, so a page needs nothing from the network. The script
does three things only: it follows the page's server-sent events (rows and the job's live part
arrive as HTML fragments the server rendered), copies YAML to the clipboard and reads an
uploaded dataset file into the form."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from finetune_operator.console.forms import UPLOAD_LIMIT
from finetune_operator.console.i18n import phase_text, text

CSS = """
:root{--fg:#1d2430;--mut:#5b6678;--bd:#d7dce4;--acc:#2457c5;--ok:#1a7f37;--warn:#9a6700;
--bad:#c42b1c;--bg:#f6f8fa}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,"Noto Sans CJK SC",sans-serif;
color:var(--fg);background:#fff}header{display:flex;gap:18px;align-items:center;padding:10px 20px;
border-bottom:1px solid var(--bd);background:var(--bg)}header b{margin-right:12px}
header a{color:var(--fg);text-decoration:none;padding:4px 8px;border-radius:6px}
header a.on{background:#e3e9f6;color:var(--acc)}header .who{margin-left:auto;color:var(--mut)}
main{padding:16px 20px;max-width:1280px}h1{font-size:20px;margin:6px 0 14px}
h2{font-size:16px;margin:22px 0 8px}h3{font-size:13px;margin:8px 0 4px;color:var(--mut)}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid var(--bd);vertical-align:middle}
th{color:var(--mut);font-weight:600;font-size:12px}td.num{text-align:right}
.phase{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;background:#eef}
.phase.Running,.phase.Admitted{background:#dbeafe}.phase.Succeeded{background:#dcfce7}
.phase.Failed{background:#fee2e2}.phase.Queued,.phase.Pending{background:#fef3c7}
.phase.Suspended,.phase.Preempting{background:#ede9fe}
.bar{width:120px;height:8px;background:#e5e7eb;border-radius:4px;overflow:hidden;
display:inline-block}
.bar i{display:block;height:100%;background:var(--acc)}.mut{color:var(--mut)}
.spark{color:var(--acc)}.chart{background:#fff;border:1px solid var(--bd);border-radius:6px}
.chart .grid{stroke:#eef0f4}.chart .tick{font-size:10px;fill:var(--mut)}
.chart polyline.line{stroke-width:1.8;fill:none}.chart .s0{stroke:#2457c5;fill:#2457c5}
.chart .s1{stroke:#c2410c;fill:#c2410c}.chart .s2{stroke:#15803d;fill:#15803d}
.chart .s3{stroke:#7e22ce;fill:#7e22ce}.chart .marker{stroke-dasharray:3 3;stroke-width:1}
.chart .marker.checkpoint{stroke:#16a34a}.chart .marker.preemption{stroke:#dc2626;stroke-width:2}
.chart .pt{fill:#2457c5}.chart .pt.best{fill:#d97706}.chart .bestlabel{font-size:11px;fill:#b45309}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:14px}
.card{border:1px solid var(--bd);border-radius:8px;padding:12px 14px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:3px 14px;margin:0}dt{color:var(--mut)}
form.f label{display:block;margin:10px 0 2px;font-weight:600}
form.f input[type=text],form.f input[type=number],form.f select,form.f textarea{width:100%;
max-width:560px;padding:6px;border:1px solid var(--bd);border-radius:6px;font:inherit}
form.f textarea,#dataset_file{display:block;margin:4px 0}
form.f .err,.fielderr{color:var(--bad);font-size:13px;margin-top:2px}
form.f .has-err input,form.f .has-err select,form.f .has-err textarea{border-color:var(--bad)}
.hint{color:var(--mut);font-size:12px}button,.btn{font:inherit;padding:6px 12px;border-radius:6px;
border:1px solid var(--bd);background:#fff;cursor:pointer;color:var(--fg);text-decoration:none}
button.primary{background:var(--acc);color:#fff;border-color:var(--acc)}
button.danger{color:var(--bad)}.actions{display:flex;gap:8px;flex-wrap:wrap;margin:8px 0}
.actions form{display:inline}.note{padding:8px 12px;border-radius:6px;margin:8px 0}
.note.ok{background:#dcfce7}.note.bad{background:#fee2e2}.note.info{background:#eef2ff}
.live{font-size:12px;color:var(--ok)}.live.off{color:var(--warn)}
ol.tl{list-style:none;padding:0;margin:0}
ol.tl li{padding:3px 0 3px 14px;border-left:3px solid var(--bd)}
ol.tl li.checkpoint{border-color:#16a34a}ol.tl li.preemption{border-color:#dc2626}
ol.tl li.attempt{border-color:#2457c5}
pre{background:var(--bg);padding:8px;overflow:auto;max-height:320px}
"""

SCRIPT = """
(function(){
  var src = document.body.getAttribute('data-events');
  var badge = document.getElementById('live');
  if (src && window.EventSource) {
    var es = new EventSource(src);
    es.addEventListener('row', function(ev){
      var d = JSON.parse(ev.data), tb = document.getElementById('rows');
      var old = document.getElementById(d.id);
      if (d.deleted) { if (old) old.remove(); return; }
      var t = document.createElement('tbody'); t.innerHTML = d.html;
      if (old) old.replaceWith(t.firstElementChild);
      else if (tb) tb.appendChild(t.firstElementChild);
      var none = document.getElementById('none'); if (none) none.remove();
    });
    es.addEventListener('job', function(ev){
      var d = JSON.parse(ev.data), el = document.getElementById('livepart');
      if (el) el.innerHTML = d.html;
    });
    es.onopen = function(){
      if (badge){ badge.className='live'; badge.textContent=badge.dataset.on; } };
    es.onerror = function(){
      if (badge){ badge.className='live off'; badge.textContent=badge.dataset.off; } };
  }
  // delegated: the live part (and its buttons) is replaced by the server's events
  document.addEventListener('click', function(ev){
    var b = ev.target.closest && ev.target.closest('[data-copy]'); if (!b) return;
    var t = document.getElementById(b.getAttribute('data-copy')).textContent;
    var done = function(){ b.textContent = b.getAttribute('data-done'); };
    if (navigator.clipboard) navigator.clipboard.writeText(t).then(done, done); else done();
  });
  document.addEventListener('submit', function(ev){
    var f = ev.target, q = f.getAttribute && f.getAttribute('data-confirm');
    if (q && !confirm(q)) ev.preventDefault();
  });
  var up = document.getElementById('dataset_file');
  if (up) up.addEventListener('change', function(){
    var file = up.files[0]; if (!file) return;
    file.text().then(function(t){ document.getElementById('dataset_text').value = t; });
  });
})();
"""


def _texts(lang: str) -> Callable[..., str]:
    def t(key: str, **values: object) -> str:
        return text(lang, key, **values)

    return t


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def layout(lang: str, *, title: str, body: str, active: str, user: str,
           events: str | None = None) -> str:
    nav = "".join(
        f'<a href="{href}" class="{"on" if key == active else ""}">{_e(text(lang, key))}</a>'
        for key, href in (("nav.jobs", "/"), ("nav.new", "/new"), ("nav.team", "/team"),
                          ("nav.sweeps", "/sweeps")))
    who = f'<span class="who">{_e(text(lang, "signed_in_as", user=user))}</span>' if user else ""
    if events:  # the live fragments in the page's language (?lang= overrides the browser's)
        events += ("&" if "?" in events else "?") + urlencode({"lang": lang})
    ev = f' data-events="{_e(events)}"' if events else ""
    return (f'<!doctype html><html lang="{"zh-CN" if lang == "zh" else "en"}"><head>'
            f'<meta charset="utf-8"><meta name="viewport" content="width=device-width">'
            f'<title>{_e(title)} · {_e(text(lang, "title"))}</title><style>{CSS}</style></head>'
            f'<body{ev}><header><b>{_e(text(lang, "title"))}</b>{nav}{who}</header>'
            f'<main>{body}</main><script>{SCRIPT}</script></body></html>')


def job_href(ns: str, name: str) -> str:
    return f"/jobs/{quote(ns)}/{quote(name)}"


def row_id(ns: str, name: str) -> str:
    return f"row-{ns}-{name}"


def row_html(r: Mapping[str, Any], lang: str) -> str:
    """One row of My jobs (also what a server-sent ``row`` event carries)."""
    pct = r.get("percent")
    bar = (f'<span class="bar" title="{_e(r["progress"])}"><i style="width:{int(pct)}%"></i>'
           f'</span> <span class="mut">{_e(r["progress"])}</span>') if pct is not None else \
        f'<span class="mut">{_e(r["progress"])}</span>'
    queue = _e(r["queue"]) if r["queue"] != "-" else ""
    return (f'<tr id="{_e(row_id(r["namespace"], r["name"]))}" data-phase="{_e(r["phase"])}">'
            f'<td><a href="{_e(job_href(r["namespace"], r["name"]))}">{_e(r["name"])}</a>'
            f'<div class="mut">{_e(r["namespace"])}</div></td>'
            f'<td><span class="phase {_e(r["phase"])}">{_e(r["phaseText"])}</span></td>'
            f'<td>{_e(r["priority"])}</td><td class="num">{_e(r["gpus"])}</td>'
            f'<td class="progress">{bar}</td><td>{r["sparkline"]}</td>'
            f'<td class="num">{_e(r["loss"])}</td><td>{_e(r["eta"])}</td>'
            f'<td class="queue num">{queue}</td><td class="reason">{_e(r["reason"])}</td>'
            f'<td class="num">{_e(r["preemptions"])}</td><td>{_e(r["age"])}</td></tr>')


def jobs_html(rows: Sequence[Mapping[str, Any]], namespaces: Sequence[str], lang: str,
              user: str, notice: str = "") -> str:
    cols = ("col.name", "col.phase", "col.band", "col.gpus", "col.progress", "col.curve",
            "col.loss", "col.eta", "col.queue", "col.reason", "col.preemptions", "col.age")
    head = "".join(f"<th>{_e(text(lang, c))}</th>" for c in cols)
    body = "".join(row_html(r, lang) for r in rows)
    none = "" if rows else (f'<p id="none" class="mut">'
                            f'{_e(text(lang, "jobs.none", namespaces=", ".join(namespaces)))}</p>')
    live = (f'<span id="live" class="live off" data-on="{_e(text(lang, "jobs.live"))}" '
            f'data-off="{_e(text(lang, "jobs.offline"))}">{_e(text(lang, "jobs.offline"))}</span>')
    events = ("/events/jobs?" + urlencode([("ns", n) for n in namespaces])) if namespaces \
        else None
    html = (f'<h1>{_e(text(lang, "jobs.heading"))} {live}</h1>{notice}'
            f'<table><thead><tr>{head}</tr></thead><tbody id="rows">{body}</tbody></table>{none}')
    return layout(lang, title=text(lang, "jobs.heading"), body=html, active="nav.jobs",
                  user=user, events=events)


def _dl(fields: Sequence[Mapping[str, Any]]) -> str:
    return "<dl>" + "".join(f"<dt>{_e(f['label'])}</dt><dd>{_e(f['value'])}</dd>"
                            for f in fields) + "</dl>"


def live_part(page: Mapping[str, Any], lang: str, csrf: str) -> str:
    """The part of the Job page that the job's events replace: the actions the phase allows,
    status, charts, timeline, conditions, events, output."""
    d, r = page["describe"], page["row"]
    pct = r.get("percent")
    bar = (f'<span class="bar"><i style="width:{int(pct)}%"></i></span> ' if pct is not None
           else "")
    head = (f'<p><span class="phase {_e(r["phase"])}" id="phase" data-phase="{_e(r["phase"])}">'
            f'{_e(r["phaseText"])}</span> {bar}<span id="progress">{_e(r["progress"])}</span>'
            f' · {_e(text(lang, "col.loss"))} {_e(r["loss"])} · {_e(text(lang, "col.eta"))} '
            f'{_e(r["eta"])} · {_e(text(lang, "job.tokens"))} {_e(page["tokensPerSecond"])}'
            + (f' · <span id="reason">{_e(r["reason"])}</span>' if r["reason"] else "")
            + "</p>")
    ch = page["charts"]
    no_points = "" if page["points"] else f'<p class="mut">{_e(text(lang, "job.no_points"))}</p>'
    source = (f'<p class="mut" id="curve-source">{_e(page["source"])}</p>' if page["source"]
              else "")
    charts = (f'<h2>{_e(text(lang, "job.curves"))}</h2>{no_points}{source}<div class="grid2">'
              f'<div><h3>{_e(text(lang, "job.loss"))}</h3>{ch["loss"]}'
              f'<p class="hint" id="eval-note">{_e(page["evalNote"])}</p></div>'
              f'<div><h3>{_e(text(lang, "job.lr"))}</h3>{ch["lr"]}'
              f'<h3>{_e(text(lang, "job.tokens"))}</h3>{ch["tps"]}</div></div>')
    tl = "".join(f'<li class="{_e(e["kind"])}">{_e(text(lang, "col.step"))} {_e(e["step"])}: '
                 f'{_e(e["text"])} <span class="mut">{_e(e["at"])}</span></li>'
                 for e in page["timeline"])
    timeline = (f'<h2>{_e(text(lang, "job.timeline"))}</h2><ol class="tl" id="timeline">{tl}'
                f'</ol>')
    conds = "".join(f'<tr><td>{_e(c["type"])}</td><td>{_e(c["status"])}</td>'
                    f'<td>{_e(c["reason"])}</td><td>{_e(c["message"])}</td>'
                    f'<td>{_e(c["age"])}</td></tr>' for c in d["conditions"])
    evs = "".join(f'<tr><td>{_e(e["type"])}</td><td>{_e(e["reason"])}</td>'
                  f'<td>{_e(e["object"])}</td><td>{_e(e["message"])}</td><td>{_e(e["age"])}</td>'
                  f'</tr>' for e in d["events"])
    out = page["output"]
    output = (_e(out["line"]) if out["line"] else _e(text(lang, "job.output_none")))
    if out["uris"]:
        output += "<br>" + "<br>".join(_e(u) for u in out["uris"])
    return (actions_html(page, lang, csrf) + head + charts + timeline
            + f'<div class="grid2"><div><h2>{_e(text(lang, "job.status"))}</h2>{_dl(d["status"])}'
            f'</div><div><h2>{_e(text(lang, "job.spec"))}</h2>{_dl(d["spec"])}</div></div>'
            f'<h2>{_e(text(lang, "job.conditions"))}</h2><table id="conditions"><thead><tr>'
            f'<th>{_e(text(lang, "col.type"))}</th><th>{_e(text(lang, "col.status"))}</th>'
            f'<th>{_e(text(lang, "col.reason"))}</th><th>{_e(text(lang, "col.message"))}</th>'
            f'<th>{_e(text(lang, "col.age"))}</th></tr></thead><tbody>{conds}</tbody></table>'
            f'<h2>{_e(text(lang, "job.events"))}</h2><table id="events"><thead><tr>'
            f'<th>{_e(text(lang, "col.type"))}</th><th>{_e(text(lang, "col.reason"))}</th>'
            f'<th>{_e(text(lang, "col.object"))}</th><th>{_e(text(lang, "col.message"))}</th>'
            f'<th>{_e(text(lang, "col.age"))}</th></tr></thead><tbody>{evs}</tbody></table>'
            f'<h2>{_e(text(lang, "job.output"))}</h2><p id="output">{output}</p>')


def _action_form(ns: str, name: str, action: str, label: str, csrf: str, cls: str = "",
                 confirm: str = "") -> str:
    conf = f' data-confirm="{_e(confirm)}"' if confirm else ""
    return (f'<form method="post" action="{_e(job_href(ns, name))}/{action}"{conf}>'
            f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
            f'<button id="btn-{action}" class="{cls}">{_e(label)}</button></form>')


def actions_html(page: Mapping[str, Any], lang: str, csrf: str) -> str:
    r = page["row"]
    ns, name = r["namespace"], r["name"]
    buttons = []
    for a in page["actions"]:
        if a in ("suspend", "resume"):
            buttons.append(_action_form(ns, name, a, text(lang, f"action.{a}"), csrf))
        elif a == "clone":
            buttons.append(f'<a class="btn" id="btn-clone" href="/new?'
                           f'{urlencode({"clone": f"{ns}/{name}"})}">'
                           f'{_e(text(lang, "action.clone"))}</a>')
        elif a == "copy_yaml":
            buttons.append(f'<button type="button" id="btn-copy" data-copy="yaml" data-done="'
                           f'{_e(text(lang, "action.copied"))}">'
                           f'{_e(text(lang, "action.copy_yaml"))}</button>')
        elif a == "delete":
            buttons.append(_action_form(ns, name, a, text(lang, "action.delete"), csrf, "danger",
                                        text(lang, "action.confirm_delete", name=name)))
    return f'<div class="actions">{"".join(buttons)}</div>'


def job_html(page: Mapping[str, Any], lang: str, user: str, csrf: str, notice: str = "") -> str:
    r = page["row"]
    ns, name = r["namespace"], r["name"]
    live = (f'<span id="live" class="live off" data-on="{_e(text(lang, "jobs.live"))}" '
            f'data-off="{_e(text(lang, "jobs.offline"))}">{_e(text(lang, "jobs.offline"))}</span>')
    body = (f'<h1>{_e(name)} <span class="mut">{_e(ns)}</span> {live}</h1>{notice}'
            f'<div id="livepart">{live_part(page, lang, csrf)}</div>'
            f'<h2>YAML</h2><pre id="yaml">{_e(page["yaml"])}</pre>')
    return layout(lang, title=name, body=body, active="nav.jobs", user=user,
                  events=f"/events{job_href(ns, name)}")


def note(kind: str, message: str) -> str:
    return f'<div class="note {kind}" id="notice">{_e(message)}</div>'


def _field(name: str, label: str, control: str, errors: Mapping[str, str], hint: str = "") -> str:
    err = errors.get(name)
    return (f'<div class="fld{" has-err" if err else ""}" id="fld-{name}"><label for="{name}">'
            f'{_e(label)}</label>{control}'
            + (f'<div class="hint">{_e(hint)}</div>' if hint else "")
            + (f'<div class="err" id="err-{name}">{_e(err)}</div>' if err else "") + "</div>")


def _input(name: str, values: Mapping[str, str], kind: str = "text", extra: str = "") -> str:
    return (f'<input type="{kind}" id="{name}" name="{name}" value="{_e(values.get(name, ""))}"'
            f'{extra}>')


def _select(name: str, options: Sequence[tuple[str, str]], selected: str) -> str:
    opts = "".join(f'<option value="{_e(v)}"{" selected" if v == selected else ""}>{_e(t)}'
                   f'</option>' for v, t in options)
    return f'<select id="{name}" name="{name}">{opts}</select>'


def new_html(*, values: Mapping[str, str], errors: Mapping[str, str], bands: Sequence[str],
             namespaces: Sequence[str], defaults: Mapping[str, Any],
             preview: tuple[str | None, Sequence[Any], str] | None, notice: str, lang: str,
             user: str, csrf: str) -> str:
    t = _texts(lang)
    ns_opts = [(n, n) for n in namespaces]
    method = values.get("method") or str(defaults.get("method", "lora"))
    fields = [
        _field("namespace", t("new.namespace"),
               _select("namespace", ns_opts, values.get("namespace", "")), errors),
        _field("name", t("new.name"), _input("name", values), errors),
        f'<h2>{_e(t("new.model"))}</h2>',
        _field("model_hub", t("new.model_hub"), _input("model_hub", values), errors),
        _field("model_pvc", t("new.model_pvc"), _input("model_pvc", values), errors),
        f'<h2>{_e(t("new.dataset"))}</h2>',
        _field("dataset_cm", t("new.dataset_cm"), _input("dataset_cm", values), errors),
        _field("dataset_pvc", t("new.dataset_pvc"), _input("dataset_pvc", values), errors),
        _field("dataset_text", t("new.dataset_upload", kib=UPLOAD_LIMIT // 1024),
               f'<input type="file" id="dataset_file" accept=".jsonl,.json,.txt">'
               f'<textarea id="dataset_text" name="dataset_text" rows="4">'
               f'{_e(values.get("dataset_text", ""))}</textarea>', errors),
        _field("format", t("new.format"), _select("format", [
            ("", t("new.format_auto")), ("messages", "messages"), ("sharegpt", "sharegpt"),
            ("alpaca", "alpaca"), ("text", "text")], values.get("format", "")), errors),
    ]
    if preview is not None:
        fmt, records, problem = preview
        shown = "\n".join(json.dumps(r, ensure_ascii=False)[:400] for r in records)
        title = t("new.preview", n=len(records), format=fmt or "?")
        fields.append(f'<div class="card" id="preview"><b>{_e(title)}</b>'
                      + (f'<div class="fielderr">{_e(problem)}</div>' if problem else "")
                      + f'<pre>{_e(shown)}</pre></div>')
    band_opts = [(b, b) for b in bands]
    fields += [
        f'<h2>{_e(t("new.method"))}</h2>',
        _field("method", t("new.method"), _select("method", [
            ("lora", t("new.method_lora")), ("qlora", t("new.method_qlora")),
            ("full", t("new.method_full"))], method), errors,
            hint=_defaults_hint(t, defaults)),
        _field("lora_rank", t("new.rank"), _input("lora_rank", values, "text"), errors),
        _field("learning_rate", t("new.lr"), _input("learning_rate", values), errors),
        _field("max_steps", t("new.steps"), _input("max_steps", values), errors),
        _field("gpus", t("new.gpus"), _input("gpus", values), errors),
        _field("band", t("new.band"), _select("band", band_opts, values.get("band", ""))
               if bands else f'<p class="mut">{_e(t("new.bands_none"))}</p>', errors),
        _field("extra", t("new.extra"), f'<textarea id="extra" name="extra" rows="4">'
               f'{_e(values.get("extra", ""))}</textarea>', errors,
               hint=t("new.extra_hint", example="training: {epochs: 2}")),
    ]
    general = errors.get("")
    body = (f'<h1>{_e(t("new.heading"))}</h1>{notice}'
            + (f'<div class="note bad" id="err-form">{_e(general)}</div>' if general else "")
            + f'<form class="f" method="post" action="/new" id="newjob">'
            f'<input type="hidden" name="csrf" value="{_e(csrf)}">{"".join(fields)}'
            f'<div class="actions"><button name="do" value="check" id="btn-check">'
            f'{_e(t("new.check"))}</button><button class="primary" name="do" value="submit" '
            f'id="btn-submit">{_e(t("new.submit"))}</button></div></form>')
    return layout(lang, title=t("new.heading"), body=body, active="nav.new", user=user)


def _defaults_hint(t: Callable[..., str], defaults: Mapping[str, Any]) -> str:
    what = (f"{defaults.get('method')}, {defaults.get('gpus')} GPU, rank "
            f"{defaults.get('lora_rank')}, lr {defaults.get('learning_rate')} "
            f"(full: {defaults.get('full_learning_rate')})")
    size = defaults.get("size", "?")
    return (t("new.defaults_unknown", text=what) if size == "?"
            else t("new.defaults", size=size, text=what))


def team_html(team: Mapping[str, Any], lang: str, user: str) -> str:
    t = _texts(lang)
    quota = []
    for q in team["quotas"]:
        used = int(q["allocated"])
        hard = q["quotaHard"]
        pct = 0 if not hard else min(100, int(100 * (q["quotaUsed"] or used) / hard))
        label = (t("team.in_use", used=used, hard=f"{hard:g}") if hard is not None
                 else t("team.in_use_noquota", used=used))
        quota.append(f'<tr><td>{_e(q["namespace"])}</td><td>{_e(q["gpuResource"])}</td>'
                     f'<td><span class="bar"><i style="width:{pct}%"></i></span> {_e(label)}</td>'
                     f'<td>{_e(t("team.waiting", n=q["queued"], gpus=q["queuedGpus"]))}</td></tr>')
    bands = []
    for b in team["bands"]:
        entries = "".join(f'<li>{_e(e["place"])}. <a href="'
                          f'{_e(job_href(e["namespace"], e["name"]))}">{_e(e["name"])}</a> '
                          f'<span class="mut">{_e(e["reason"])}</span></li>' for e in b["entries"])
        bands.append(f'<div class="card"><b>{_e(b["band"])}</b>: '
                     f'{_e(t("team.waiting", n=b["jobs"], gpus=b["gpus"]))}<ol>{entries}</ol>'
                     f'</div>')
    fin = "".join(f'<tr><td><a href="{_e(job_href(f["namespace"], f["name"]))}">{_e(f["name"])}'
                  f'</a></td><td><span class="phase {_e(f["phase"])}">'
                  f'{_e(phase_text(lang, f["phase"]))}</span></td>'
                  f'<td>{_e(f["completed"])}</td></tr>' for f in team["finished"])
    body = (f'<h1>{_e(t("team.heading"))}</h1><h2>{_e(t("team.quota"))}</h2>'
            f'<table id="quotas"><tbody>{"".join(quota)}</tbody></table>'
            f'<h2>{_e(t("team.queue"))}</h2><div class="grid2" id="bands">'
            f'{"".join(bands) or _e(t("team.waiting", n=0, gpus=0))}</div>'
            f'<h2>{_e(t("team.finished"))}</h2><table id="finished"><tbody>{fin}</tbody></table>'
            f'<h2>{_e(t("team.lost"))}</h2><p id="lost">{_e(team["lostGpuHours"])} '
            f'({_e(t("col.preemptions"))}: {_e(team["preemptions"])})</p>')
    return layout(lang, title=t("team.heading"), body=body, active="nav.team", user=user)


def sweeps_html(sweeps: Sequence[Mapping[str, Any]], namespaces: Sequence[str], lang: str,
                user: str) -> str:
    t = _texts(lang)
    if not sweeps:
        inner = f'<p class="mut">{_e(t("sweeps.none", namespaces=", ".join(namespaces)))}</p>'
    else:
        inner = ""
        for s in sweeps:
            row, table = s["row"], s["table"]
            params = table["parameters"]
            head = ("<th>#</th><th>" + _e(t("col.trial")) + "</th><th>" + _e(t("col.phase"))
                    + "</th>" + "".join(f"<th>{_e(p['label'])}</th>" for p in params)
                    + "".join(f"<th>{_e(m)}</th>" for m in table["metrics"])
                    + f"<th>{_e(t('col.gpu_hours'))}</th><th>{_e(t('col.preemptions'))}</th>")
            rows = []
            for r in table["rows"]:
                best = r["name"] == s["best"]
                cells = "".join(f"<td>{_e(r['parameters'].get(p['path']))}</td>" for p in params)
                mets = "".join(f"<td class='num'>{_e(_fmt(r['metrics'].get(m)))}</td>"
                               for m in table["metrics"])
                mark = f' <b class="best">★ {_e(t("sweeps.best"))}</b>' if best else ""
                rows.append(f'<tr class="{"best" if best else ""}"><td>{_e(r["rank"] or "-")}'
                            f'</td><td><a href="{_e(job_href(r["namespace"] or "", r["name"]))}">'
                            f'{_e(r["name"])}</a>{mark}</td>'
                            f'<td>{_e(phase_text(lang, r["phase"]))}</td>'
                            f'{cells}{mets}'
                            f'<td class="num">{_e(_fmt(r["gpuHours"]))}</td>'
                            f'<td class="num">{_e(r["preemptions"])}</td></tr>')
            inner += (f'<h2>{_e(row["name"])} <span class="mut">{_e(row["namespace"])} · '
                      f'{_e(phase_text(lang, row["phase"]))} · {_e(row["trials"])} · '
                      f'{_e(row["metric"])}</span></h2>'
                      f'<div class="grid2">{"".join(_captioned(p) for p in s["plots"])}</div>'
                      f'<table class="trials"><thead><tr>{head}</tr></thead><tbody>'
                      f'{"".join(rows)}</tbody></table>')
    return layout(lang, title=t("sweeps.heading"), body=f'<h1>{_e(t("sweeps.heading"))}</h1>'
                  + inner, active="nav.sweeps", user=user)


def _captioned(svg: str) -> str:
    """A chart with its title (the SVG's aria-label) above it."""
    label = svg.split('aria-label="', 1)[1].split('"', 1)[0] if 'aria-label="' in svg else ""
    return f"<div><h3>{label}</h3>{svg}</div>"  # already escaped in the SVG


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def error_html(status: int, message: str, lang: str, user: str) -> str:
    body = (f'<h1>HTTP {status}</h1><div class="note bad" id="error">{_e(message)}</div>'
            f'<p><a href="/">{_e(text(lang, "nav.jobs"))}</a></p>')
    return layout(lang, title=f"HTTP {status}", body=body, active="", user=user)
