# ruff: noqa: RUF001 (the Chinese texts use full-width punctuation on purpose)
"""The console's two languages, English and Simplified Chinese, chosen from the browser's
``Accept-Language`` (RFC 9110 quality values; any ``zh`` but the traditional scripts and
regions picks Chinese). Pure: the catalogs and a few functions.

Every text the pages show goes through :func:`text`; a key missing from a catalog is a test
failure (tests/unit/console/test_i18n.py checks both catalogs hold the same keys), never an
English word in a Chinese page. The Job page's describe fields come from the plugin's view in
English: :func:`field_label` gives their labels, :func:`phase_text` the phase; their other values
(numbers, paths, spec words) stay as ``kubectl finetune describe`` writes them. What comes from
the cluster (reasons, condition and event messages, names) is shown as the API server and the
operator wrote it."""

from __future__ import annotations

LANGUAGES = ("en", "zh")
_TRADITIONAL = ("zh-tw", "zh-hk", "zh-mo", "zh-hant")

EN: dict[str, str] = {
    "title": "Fine-tuning console",
    "nav.jobs": "My jobs", "nav.new": "New job", "nav.team": "Team", "nav.sweeps": "Sweeps",
    "signed_in_as": "Signed in as {user}",
    "jobs.heading": "My jobs", "jobs.none": "No jobs in {namespaces} yet.",
    "jobs.live": "live", "jobs.offline": "reconnecting",
    "col.name": "Name", "col.namespace": "Namespace", "col.phase": "Phase",
    "col.band": "Priority band", "col.gpus": "GPUs", "col.progress": "Progress",
    "col.loss": "Loss", "col.eta": "ETA", "col.queue": "Queue", "col.reason": "Why",
    "col.preemptions": "Preemptions", "col.age": "Age", "col.curve": "Loss curve",
    "col.type": "Type", "col.status": "Status", "col.message": "Message",
    "col.object": "Object", "col.step": "Step", "col.attempt": "Attempt",
    "col.when": "When", "col.what": "What", "col.trial": "Trial", "col.metric": "Metric",
    "col.parameters": "Parameters", "col.gpu_hours": "GPU-hours",
    "job.curves": "Curves", "job.loss": "Training loss",
    "job.lr": "Learning rate", "job.tokens": "Tokens per second",
    "job.timeline": "Checkpoints, attempts and preemptions",
    "job.conditions": "Conditions", "job.events": "Events", "job.output": "Output",
    "job.spec": "What it trains", "job.status": "Where it is",
    "job.no_points": "No points yet: the curve starts with the trainer's first report.",
    "job.checkpoint": "checkpoint at step {step}", "job.preempted": "preempted",
    "job.attempt": "attempt {n}",
    "job.output_none": "No output yet: it is written when the job succeeds.",
    "action.suspend": "Suspend", "action.resume": "Resume", "action.delete": "Delete",
    "action.clone": "Clone as new job", "action.copy_yaml": "Copy YAML",
    "action.copied": "Copied", "action.confirm_delete": "Delete job {name}? This cannot be undone.",
    "action.done": "{action}: done.",
    "new.heading": "New fine-tuning job", "new.name": "Job name",
    "new.namespace": "Namespace", "new.model": "Model",
    "new.model_hub": "Hub model id (e.g. Qwen/Qwen2.5-0.5B-Instruct)",
    "new.model_pvc": "Or a volume path (claim:path)",
    "new.dataset": "Dataset", "new.dataset_cm": "ConfigMap (name:key)",
    "new.dataset_pvc": "Or a volume file (claim:path)",
    "new.dataset_upload": "Or upload a small file (JSON Lines, at most {kib} KiB)",
    "new.format": "Format", "new.format_auto": "detect",
    "new.method": "Method", "new.method_lora": "LoRA (adapter, the usual choice)",
    "new.method_qlora": "QLoRA (adapter on a 4-bit model: least GPU memory)",
    "new.method_full": "Full (every weight: most GPU memory)",
    "new.gpus": "GPUs", "new.band": "Priority band", "new.steps": "Max steps",
    "new.lr": "Learning rate", "new.rank": "LoRA rank", "new.submit": "Check and submit",
    "new.check": "Check only (dry run)", "new.ok_dry": "The API server accepts this job.",
    "new.created": "Created {name}.", "new.defaults": "Defaults for a {size} model: {text}",
    "new.defaults_unknown": "Defaults (no size in the model's name: those of a small model): "
    "{text}",
    "new.preview": "Preview: first {n} records, detected format {format}",
    "new.bands_none": "No priority band is open to this namespace.",
    "new.errors": "The API server refused the job; see the fields marked below.",
    "team.heading": "Team", "team.quota": "GPUs in use against quota",
    "team.queue": "Queue by priority band", "team.finished": "Finished this week",
    "team.lost": "GPU-hours lost to preemption (estimate)",
    "team.no_quota": "no quota", "team.waiting": "{n} waiting, {gpus} GPUs asked",
    "team.in_use": "{used} of {hard} GPUs in use", "team.in_use_noquota": "{used} GPUs in use",
    "sweeps.heading": "Sweeps", "sweeps.none": "No sweeps in {namespaces}.",
    "sweeps.best": "best", "sweeps.chart": "{metric} against {param}",
    "err.forbidden": "The API server refused this with your credentials: {detail}",
    "err.not_found": "Not found: {detail}",
    "err.unreachable": "The API server did not answer: {detail}",
    "err.bad_request": "Bad request: {detail}",
    "phase.Pending": "Pending", "phase.Queued": "Queued", "phase.Admitted": "Admitted",
    "phase.Running": "Running", "phase.Preempting": "Preempting",
    "phase.Suspended": "Suspended", "phase.Succeeded": "Succeeded", "phase.Failed": "Failed",
    "job.eval_during": "Evaluation loss: the trainer does not report it during training (its "
    "progress reports carry the training loss only), so there is no evaluation curve.",
    "job.eval_final": "Final evaluation loss {value} at step {step}.",
    "job.deleted": "{name}: deleted.",
    "new.extra": "More spec fields (YAML)",
    "new.extra_hint": "any other spec field, e.g. {example}",
    "source.prometheus": "Curve from Prometheus (every point since the job started).",
    "source.history": "Curve from the console's own record, since {at}.",
    # the Job page's describe fields (the plugin's `kubectl finetune describe` labels)
    "field.Model": "Model", "field.Dataset": "Dataset", "field.Method": "Method",
    "field.Training": "Training", "field.Resources": "Resources", "field.Priority": "Priority",
    "field.Checkpoints": "Checkpoints", "field.Suspend": "Suspend",
    "field.Backoff limit": "Backoff limit", "field.Phase": "Phase", "field.Reason": "Reason",
    "field.Queue position": "Queue position", "field.Progress": "Progress",
    "field.Checkpoint": "Checkpoint", "field.Counters": "Counters", "field.Started": "Started",
    "field.Completed": "Completed", "field.Output": "Output", "field.Output URIs": "Output URIs",
    "field.Source": "Source {source}", "field.Output claim": "Output claim",
    "field.GPU memory": "GPU memory",
}

ZH: dict[str, str] = {
    "title": "微调控制台",
    "nav.jobs": "我的任务", "nav.new": "新建任务", "nav.team": "团队", "nav.sweeps": "超参搜索",
    "signed_in_as": "当前用户：{user}",
    "jobs.heading": "我的任务", "jobs.none": "{namespaces} 中还没有任务。",
    "jobs.live": "实时", "jobs.offline": "正在重新连接",
    "col.name": "名称", "col.namespace": "命名空间", "col.phase": "阶段",
    "col.band": "优先级", "col.gpus": "GPU", "col.progress": "进度",
    "col.loss": "损失", "col.eta": "预计剩余", "col.queue": "排队", "col.reason": "原因",
    "col.preemptions": "被抢占次数", "col.age": "创建于", "col.curve": "损失曲线",
    "col.type": "类型", "col.status": "状态", "col.message": "信息",
    "col.object": "对象", "col.step": "步数", "col.attempt": "第几次运行",
    "col.when": "时间", "col.what": "事件", "col.trial": "试验", "col.metric": "指标",
    "col.parameters": "参数", "col.gpu_hours": "GPU 小时",
    "job.curves": "曲线", "job.loss": "训练损失",
    "job.lr": "学习率", "job.tokens": "每秒词元数",
    "job.timeline": "检查点、运行次数与抢占",
    "job.conditions": "状况", "job.events": "事件", "job.output": "输出",
    "job.spec": "训练内容", "job.status": "当前状态",
    "job.no_points": "暂无数据：训练器第一次上报后开始绘制曲线。",
    "job.checkpoint": "第 {step} 步的检查点", "job.preempted": "被抢占",
    "job.attempt": "第 {n} 次运行",
    "job.output_none": "暂无输出：任务成功后写入。",
    "action.suspend": "暂停", "action.resume": "恢复", "action.delete": "删除",
    "action.clone": "复制为新任务", "action.copy_yaml": "复制 YAML",
    "action.copied": "已复制", "action.confirm_delete": "删除任务 {name}？此操作无法撤销。",
    "action.done": "{action}：已完成。",
    "new.heading": "新建微调任务", "new.name": "任务名称",
    "new.namespace": "命名空间", "new.model": "模型",
    "new.model_hub": "Hub 模型 ID（例如 Qwen/Qwen2.5-0.5B-Instruct）",
    "new.model_pvc": "或存储卷路径（claim:path）",
    "new.dataset": "数据集", "new.dataset_cm": "ConfigMap（name:key）",
    "new.dataset_pvc": "或存储卷文件（claim:path）",
    "new.dataset_upload": "或上传小文件（JSON Lines，最多 {kib} KiB）",
    "new.format": "格式", "new.format_auto": "自动识别",
    "new.method": "方法", "new.method_lora": "LoRA（适配器，常用）",
    "new.method_qlora": "QLoRA（4 位量化模型上的适配器：显存最少）",
    "new.method_full": "全参数（所有权重：显存最多）",
    "new.gpus": "GPU 数量", "new.band": "优先级", "new.steps": "最大步数",
    "new.lr": "学习率", "new.rank": "LoRA 秩", "new.submit": "检查并提交",
    "new.check": "仅检查（试运行）", "new.ok_dry": "API 服务器接受此任务。",
    "new.created": "已创建 {name}。", "new.defaults": "{size} 模型的默认值：{text}",
    "new.defaults_unknown": "默认值（模型名称中没有参数规模，按小模型）：{text}",
    "new.preview": "预览：前 {n} 条记录，识别的格式为 {format}",
    "new.bands_none": "此命名空间没有可用的优先级。",
    "new.errors": "API 服务器拒绝了此任务，请查看下方标出的字段。",
    "team.heading": "团队", "team.quota": "GPU 使用与配额",
    "team.queue": "按优先级排队", "team.finished": "本周完成",
    "team.lost": "因抢占损失的 GPU 小时（估算）",
    "team.no_quota": "无配额", "team.waiting": "{n} 个等待，共需 {gpus} 个 GPU",
    "team.in_use": "已用 {used} / {hard} 个 GPU", "team.in_use_noquota": "已用 {used} 个 GPU",
    "sweeps.heading": "超参搜索", "sweeps.none": "{namespaces} 中没有超参搜索。",
    "sweeps.best": "最佳", "sweeps.chart": "{metric} 与 {param} 的关系",
    "err.forbidden": "API 服务器以你的身份拒绝了此操作：{detail}",
    "err.not_found": "未找到：{detail}",
    "err.unreachable": "API 服务器没有响应：{detail}",
    "err.bad_request": "请求有误：{detail}",
    "phase.Pending": "待处理", "phase.Queued": "排队中", "phase.Admitted": "已准入",
    "phase.Running": "运行中", "phase.Preempting": "正在被抢占",
    "phase.Suspended": "已暂停", "phase.Succeeded": "已成功", "phase.Failed": "已失败",
    "job.eval_during": "验证损失：训练器在训练过程中不上报验证损失（进度报告只含训练损失），"
    "因此没有验证损失曲线。",
    "job.eval_final": "最终验证损失 {value}（第 {step} 步）。",
    "job.deleted": "{name}：已删除。",
    "new.extra": "其他 spec 字段（YAML）",
    "new.extra_hint": "任意其他 spec 字段，例如 {example}",
    "source.prometheus": "曲线来自 Prometheus（任务开始以来的每个点）。",
    "source.history": "曲线来自控制台自己的记录，始于 {at}。",
    "field.Model": "模型", "field.Dataset": "数据集", "field.Method": "方法",
    "field.Training": "训练设置", "field.Resources": "资源", "field.Priority": "优先级",
    "field.Checkpoints": "检查点设置", "field.Suspend": "暂停",
    "field.Backoff limit": "失败重试上限", "field.Phase": "阶段", "field.Reason": "原因",
    "field.Queue position": "排队位置", "field.Progress": "进度",
    "field.Checkpoint": "检查点", "field.Counters": "计数", "field.Started": "开始于",
    "field.Completed": "完成于", "field.Output": "输出", "field.Output URIs": "输出 URI",
    "field.Source": "来源 {source}", "field.Output claim": "输出存储卷",
    "field.GPU memory": "GPU 显存",
}

CATALOGS: dict[str, dict[str, str]] = {"en": EN, "zh": ZH}


def language(accept_language: str | None) -> str:
    """``en`` or ``zh``: the first of the browser's languages (by quality, then order) that is
    one of the two; English when none is."""
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        for p in params.split(";"):
            k, _, v = p.strip().partition("=")
            if k == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if tag and q > 0:
            ranked.append((-q, i, tag.strip().lower()))
    for _, _, tag in sorted(ranked):
        if tag == "zh" or (tag.startswith("zh-") and not tag.startswith(_TRADITIONAL)):
            return "zh"
        if tag == "en" or tag.startswith("en-"):
            return "en"
    return "en"


def phase_text(lang: str, phase: str) -> str:
    """A phase in ``lang`` (an unknown one as it is)."""
    key = f"phase.{phase}"
    return text(lang, key) if key in EN else phase


def field_label(lang: str, label: str) -> str:
    """A describe field's label (``view.describe``'s English) in ``lang``; ``Source <kind>``
    keeps its kind (a spec word: model, dataset, evalDataset); an unknown label as it is."""
    if label.startswith("Source "):
        return text(lang, "field.Source", source=label[len("Source "):])
    key = f"field.{label}"
    return text(lang, key) if key in EN else label


def text(lang: str, key: str, **values: object) -> str:
    """The text of ``key`` in ``lang`` with ``values`` filled in."""
    template = CATALOGS.get(lang, EN).get(key) or EN[key]
    return template.format(**values) if values else template
