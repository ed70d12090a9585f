"""Steps of ``autoseg.inference.overlap`` that misbehave for one case, for the worker tests: a test
puts one in place of ``overlap._prepare_step`` or ``overlap._export_step``, and the spawned worker
imports it from here by name (tests/ is on the path the workers inherit). Each writes its process
id to ``worker.pid`` beside the output folder before it misbehaves, so that a test can check the
worker is gone afterwards."""
import os
import time

from autoseg.inference import overlap

PREPARE, EXPORT = overlap._prepare_step, overlap._export_step  # the real steps, before any test patches them


def _mark(job) -> None:
    (job.target.parent.parent / "worker.pid").write_text(str(os.getpid()))


def exit_preparing_good_b(job, *args):
    if job.case_id == "good_b":
        _mark(job)
        os._exit(3)  # as the out-of-memory killer would end it: no exception, no message
    return PREPARE(job, *args)


def hang_preparing_good_b(job, *args):
    if job.case_id == "good_b":
        _mark(job)
        time.sleep(3600)
    return PREPARE(job, *args)


def exit_exporting_good_a(job, *args):
    if job.case_id == "good_a":
        _mark(job)
        os._exit(3)
    return EXPORT(job, *args)
