"""The curves' history: what the jobs' watch shows is kept per job, bounded, and survives a
console restart (its file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune_operator.console.history import History, Point, thin


def job(step: int, loss: float | None = 1.0, attempt: int = 1, preemptions: int = 0,
        checkpoint: int | None = None, uid: str = "u-1") -> dict[str, Any]:
    st: dict[str, Any] = {"attempt": attempt, "preemptions": preemptions,
                          "progress": {"step": step, "updatedAt": f"t{step}",
                                       "learningRate": 1e-3, "tokensPerSecond": 100.0}}
    if loss is not None:
        st["progress"]["loss"] = loss
    if checkpoint is not None:
        st["checkpoint"] = {"step": checkpoint, "savedAt": "t"}
    return {"metadata": {"uid": uid, "name": "j", "namespace": "n"}, "status": st}


def test_points_checkpoints_and_preemptions_are_kept(tmp_path: Path) -> None:
    h = History(tmp_path)
    assert h.observe(job(10, 2.0))
    assert not h.observe(job(10, 2.0))  # the same report seen again (relist, page load)
    assert h.observe(job(20, 1.5, checkpoint=20))
    assert h.observe(job(20, 1.5, checkpoint=20, preemptions=1))
    assert h.observe(job(25, 1.4, attempt=2, checkpoint=20, preemptions=1))
    assert not h.observe(job(0, None, attempt=2, checkpoint=20, preemptions=1))
    c = h.curve("u-1")
    assert [(p.step, p.attempt, p.loss) for p in c.points] == [(10, 1, 2.0), (20, 1, 1.5),
                                                               (25, 2, 1.4)]
    assert [(m.kind, m.step) for m in c.marks] == [("checkpoint", 20), ("preemption", 20)]
    # a console started again reads it back, and does not count the preemption twice
    again = History(tmp_path)
    c2 = again.curve("u-1")
    assert c2.points == c.points and c2.marks == c.marks
    assert not again.observe(job(25, 1.4, attempt=2, checkpoint=20, preemptions=1))


def test_a_preemption_is_marked_where_the_trainer_stopped(tmp_path: Path) -> None:
    """The status that first shows the preemption also holds the step the trainer reached on
    the way out (its last report, the checkpoint it saved): the mark goes there, not at the
    last point the console happened to see before it."""
    h = History(tmp_path)
    assert h.observe(job(66, 5.1, checkpoint=50))
    assert h.observe(job(74, 4.9, checkpoint=74, preemptions=1))
    c = h.curve("u-1")
    assert [(m.kind, m.step) for m in c.marks] == [("checkpoint", 50), ("preemption", 74),
                                                   ("checkpoint", 74)]
    assert [p.step for p in c.points] == [66, 74]


def test_a_job_without_uid_or_loss_adds_nothing(tmp_path: Path) -> None:
    h = History(tmp_path)
    assert not h.observe({"metadata": {"name": "x"}, "status": {"progress": {"step": 3}}})
    assert not h.observe(job(5, None))
    assert h.curve("u-1").points == []


def test_a_long_run_is_thinned_to_the_cap_keeping_its_span(tmp_path: Path) -> None:
    h = History(tmp_path, cap=50)
    for step in range(1, 501):
        h.observe(job(step, 1.0 / step))
    c = h.curve("u-1")
    assert len(c.points) <= 50
    assert c.points[0].step == 1 and c.points[-1].step == 500
    assert [p.step for p in c.points] == sorted(p.step for p in c.points)
    assert len(History(tmp_path, cap=50).curve("u-1").points) == len(c.points)  # rewritten
    assert len((tmp_path / "u-1.jsonl").read_text().splitlines()) <= 50 + 2


def test_thin_keeps_the_newest_half_whole() -> None:
    pts = [Point(i, 1) for i in range(100)]
    out = thin(pts, 60)
    assert len(out) <= 60 and out[-30:] == pts[-30:]


def test_a_torn_line_is_skipped(tmp_path: Path) -> None:
    History(tmp_path).observe(job(10))
    with (tmp_path / "u-1.jsonl").open("a") as f:
        f.write('{"k": "p", "step": 1')
    assert [p.step for p in History(tmp_path).curve("u-1").points] == [10]


def test_an_odd_uid_never_names_a_file(tmp_path: Path) -> None:
    h = History(tmp_path)
    assert h.observe(job(10, uid="../../etc/passwd"))
    assert list(tmp_path.iterdir()) == []


def test_preemptions_before_the_first_sight_are_not_marked(tmp_path: Path) -> None:
    """A console that first sees a job after it was preempted cannot know where: it counts the
    preemption (so it is not marked later either) and draws no marker at the wrong step."""
    h = History(tmp_path)
    assert h.observe(job(400, 2.8, attempt=2, checkpoint=400, preemptions=1))
    c = h.curve("u-1")
    assert [(m.kind, m.step) for m in c.marks] == [("checkpoint", 400)]
    assert c.preemptions == 1
    assert not History(tmp_path).observe(job(400, 2.8, attempt=2, checkpoint=400,
                                             preemptions=1))
    assert h.observe(job(410, 2.7, attempt=3, checkpoint=400, preemptions=2))
    assert [m.kind for m in h.curve("u-1").marks] == ["checkpoint", "preemption"]
