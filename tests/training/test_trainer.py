"""Real (tiny) training runs on CPU: resume exactness and the CLI end to end."""
import json

import pytest
import torch

from autoseg import device as device_module
from autoseg.cli import main
from autoseg.paths import Workspace
from autoseg.plans import load_plans
from autoseg.training import fold_run, resolve, steps, trainer
from autoseg.training.checkpoint import load_checkpoint, load_trained_model
from autoseg.training.train_config import TrainConfig


@pytest.fixture
def prepared(synth_dataset, workspace):
    assert main(["plan_and_preprocess", "-d", "901", "-np", "1", "--device-profile", "cpu",
                 "-c", "3d_fullres", "--root", str(workspace)]) == 0
    return Workspace(workspace)


def small_config(epochs: int) -> TrainConfig:
    return TrainConfig().with_(schedule=dict(num_epochs=epochs, num_iterations_per_epoch=3,
                                             num_val_iterations_per_epoch=1),
                               sampling=dict(num_workers=0, batch_size=2))


def weights(fold_dir, name="checkpoint_final"):
    return load_checkpoint(fold_dir / f"{name}.pth")["network"]


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_interrupted_then_resumed_equals_uninterrupted(prepared, monkeypatch):
    ws = prepared
    straight = trainer.train_fold(ws, "901", "3d_fullres", 0, small_config(2), variant="a", validate=False)

    real_step, calls = fold_run.train_step, {"n": 0}

    def failing_step(*args):
        calls["n"] += 1
        if calls["n"] == 5:  # mid-way through the second epoch
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(fold_run, "train_step", failing_step)
    with pytest.raises(KeyboardInterrupt):
        trainer.train_fold(ws, "901", "3d_fullres", 0, small_config(2), variant="b", validate=False)
    fold_b = straight.parent.parent / "b" / "fold_0"
    assert load_checkpoint(fold_b / "checkpoint_latest.pth")["iteration"] == 4
    monkeypatch.setattr(fold_run, "train_step", real_step)
    trainer.train_fold(ws, "901", "3d_fullres", 0, small_config(2), variant="b", resume=True, validate=False)
    assert_same(weights(straight), weights(fold_b))


def test_extending_a_finished_run(prepared):
    ws = prepared
    straight = trainer.train_fold(ws, "901", "3d_fullres", 0, small_config(2), variant="a", validate=False)
    trainer.train_fold(ws, "901", "3d_fullres", 0, small_config(1), variant="c", validate=False)
    fold_c = straight.parent.parent / "c" / "fold_0"
    with pytest.raises(Exception, match="already holds a finished model"):
        trainer.train_fold(ws, "901", "3d_fullres", 0, small_config(2), variant="c", validate=False)
    # epoch 0 uses the initial lr whatever num_epochs is, so 1 epoch + 1 more == 2 epochs
    trainer.train_fold(ws, "901", "3d_fullres", 0, small_config(2), variant="c", resume=True, validate=False)
    assert_same(weights(straight), weights(fold_c))
    assert len(load_checkpoint(fold_c / "checkpoint_final.pth")["history"]["train_loss"]) == 2


def test_progress_plot_is_throttled_and_drawn_at_the_end(prepared, monkeypatch):
    drawn = []
    monkeypatch.setattr(fold_run, "plot_progress", lambda history, path: drawn.append(len(history["train_loss"])))
    monkeypatch.setattr(fold_run, "PLOT_EVERY_S", 1e9)  # never during training: once, after the last epoch
    trainer.train_fold(prepared, "901", "3d_fullres", 0, small_config(3), variant="p", validate=False)
    assert drawn == [3]
    drawn.clear()
    monkeypatch.setattr(fold_run, "PLOT_EVERY_S", 0.0)  # after every epoch, and once more at the end
    trainer.train_fold(prepared, "901", "3d_fullres", 0, small_config(2), variant="q", validate=False)
    assert drawn == [1, 2, 2]


def test_resuming_goes_on_with_the_optimizer_the_run_started_with(prepared):
    started = small_config(1).with_(**{"optim.optimizer": "sgd"})
    fold = trainer.train_fold(prepared, "901", "3d_fullres", 0, started, variant="o", validate=False)
    # extended with the default "auto", which for a new run this short would start AdamW
    trainer.train_fold(prepared, "901", "3d_fullres", 0, small_config(2), variant="o", resume=True, validate=False)
    state = load_checkpoint(fold / "checkpoint_final.pth")
    assert state["iteration"] == 6 and all("momentum_buffer" in s for s in state["optimizer"]["state"].values())
    saved = json.loads((fold / "train_config.json").read_text())
    assert (saved["optim"]["optimizer"], saved["optim"]["initial_lr"]) == ("sgd", 1e-2)


def test_cli_train_writes_every_artifact_and_validation(prepared):
    root = str(prepared.root)
    code = main(["train", "3d_fullres", "1", "-d", "901", "--root", root, "-np", "0",
                 "--set", "num_epochs=2", "--set", "num_iterations_per_epoch=4",
                 "--set", "num_val_iterations_per_epoch=1"])
    assert code == 0
    fold = prepared.results / "Dataset901_Synth" / "3d_fullres" / "default" / "fold_1"
    for name in ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth", "train_config.json",
                 "plans.json", "training.log", "progress.png"):
        assert (fold / name).is_file(), name
    assert json.loads((fold / "train_config.json").read_text())["schedule"]["num_epochs"] == 2
    assert sum("epoch" in line and "pseudo_dice" in line for line in (fold / "training.log").read_text().splitlines()) == 2
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    splits = json.loads((prepared.preprocessed / "Dataset901_Synth" / "splits.json").read_text())
    assert sorted(c["case_id"] for c in summary["per_case"]) == splits[1]["val"]
    model = load_trained_model(fold)
    assert not model.network.deep_supervision and model.configuration.name == "3d_fullres"
    # --val recomputes the summary from the finished model
    (fold / "validation" / "summary.json").unlink()
    assert main(["train", "3d_fullres", "1", "-d", "901", "--root", root, "--val"]) == 0
    assert (fold / "validation" / "summary.json").is_file()


def test_small_class_settings_reach_the_sampler_and_loss(prepared, monkeypatch):
    seen = {}
    real_source, real_loss = fold_run.BatchSource, fold_run.build_loss

    def source(*args, **kwargs):
        seen.setdefault("shares", []).append(args[3].class_shares)
        seen.setdefault("sources", []).append(real_source(*args, **kwargs))
        return seen["sources"][-1]

    def loss(*args):
        seen["loss_args"] = args
        return real_loss(*args)

    monkeypatch.setattr(fold_run, "BatchSource", source)
    monkeypatch.setattr(fold_run, "build_loss", loss)
    cfg = small_config(1).with_(small_classes=dict(classes=(1,), ce_weight=3.0, oversample=0.33, batch_dice=True))
    # a validation that found none of the 5 reference lesions of class 1: the log says it was not learned
    from autoseg.inference import validation

    monkeypatch.setattr(validation, "validate_fold", lambda *args: {
        "foreground_mean": {"dice": 0.5}, "pooled": {"1": {"n_ref_lesions": 5, "n_pred_lesions": 0}}})
    fold = trainer.train_fold(prepared, "901", "3d_fullres", 0, cfg, variant="s")
    assert "small class 1 was never predicted on the 2 validation cases of fold_0, which hold 5" in \
        (fold / "training.log").read_text()
    assert seen["shares"][0] == {1: pytest.approx(cfg.small_classes.oversample)}  # the prior's and training's
    with_shares = [s for s, shares in zip(seen["sources"], seen["shares"]) if shares]  # priors', training's
    assert len(with_shares) == 2
    num_classes = len(seen["loss_args"][5])
    assert seen["loss_args"][5] == tuple(3.0 if k == 1 else 1.0 for k in range(num_classes))
    assert seen["loss_args"][6] == (1,)
    assert "small classes (1,)" in (fold / "training.log").read_text()


def test_train_step_reports_the_norm_before_clipping():
    # loss = w . x with x = (3, 4): gradient x, norm 5; clipped to 1 the step is lr * x / 5
    w = torch.nn.Parameter(torch.zeros(2))
    x = torch.tensor([3.0, 4.0])

    class Dot(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = w

        def forward(self, data):
            return (self.w * data).sum()

    net = Dot()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss, norm = steps.train_step(net, lambda out, target: out, opt, None, {"data": x, "target": x},
                                  torch.device("cpu"), grad_clip=1.0)
    assert loss == 0.0
    assert norm == pytest.approx(5.0)
    assert w.detach().tolist() == pytest.approx([-0.1 * 3 / 5, -0.1 * 4 / 5])


def test_epoch_line_shows_grad_norm_and_clipped_share():
    from autoseg.training.progress import format_epoch

    h = {"train_loss": [0.5], "val_loss": [0.4], "pseudo_dice": [[0.8, 0.7]], "ema_dice": [0.75], "lr": [0.01],
         "epoch_time": [12.0], "data_wait": [0.02], "grad_norm": [3.456], "clipped": [0.25]}
    assert format_epoch(h, 0).endswith("time 12.0s  data wait 2%  grad norm 3.46 (clipped 25%)")
    del h["grad_norm"], h["clipped"]  # histories saved before the norm was logged
    assert format_epoch(h, 0).endswith("time 12.0s  data wait 2%")


def _set_timed_layouts(ws: Workspace, fastest: str, precision: str = "fp32") -> None:
    """Make throughput.json say that the planned width's step was faster in ``fastest``."""
    folder = ws.preprocessed / "Dataset901_Synth"
    path = folder / "throughput.json"
    throughput = json.loads(path.read_text())
    width = json.loads((folder / "plans.json").read_text())["configurations"]["3d_fullres"]["network"][
        "features_per_stage"][0]
    for c in throughput["configurations"]["3d_fullres"]["candidates"]:
        layouts = {"contiguous": 0.2, "channels_last": 0.1} if c["base_features"] == width else {"contiguous": 0.2}
        if fastest == "contiguous":
            layouts = {"contiguous": 0.1, "channels_last": 0.2}
        c["seconds_by_precision"] = {precision: layouts}  # timed in one precision only
        c["precision"], c["seconds_per_step"] = precision, min(layouts.values())
        c["memory_format"] = min(layouts, key=layouts.get)
    path.write_text(json.dumps(throughput))


def test_training_runs_in_the_layout_timed_faster_at_planning(prepared, monkeypatch):
    _set_timed_layouts(prepared, "channels_last")  # timed in fp32, so training must run in fp32 to use them
    # precision auto takes the planning's choice on this CPU, even where a new probe would say bf16
    monkeypatch.setattr(device_module, "cpu_bf16_is_faster", lambda: True)
    fold = trainer.train_fold(prepared, "901", "3d_fullres", 0, small_config(1), variant="cl")
    saved = json.loads((fold / "train_config.json").read_text())
    assert saved["runtime"]["precision"] == "fp32" and saved["runtime"]["memory_format"] == "channels_last"
    log = (fold / "training.log").read_text()
    assert "precision fp32: chosen when planning on this CPU (throughput.json)" in log
    assert "memory format channels_last: its training step was the faster one" in log
    fp32 = small_config(1).with_(**{"runtime.precision": "fp32"})
    conv = weights(fold)["encoder.0.3.weight"]  # (out, in, 3, 3, 3): saved as trained, channels-last
    assert conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()
    assert (fold / "validation" / "summary.json").is_file()  # the sliding-window validation ran on it
    # a layout named on the command line wins over the timings
    fold = trainer.train_fold(prepared, "901", "3d_fullres", 0,
                              fp32.with_(**{"runtime.memory_format": "contiguous"}),
                              variant="contig", validate=False)
    assert json.loads((fold / "train_config.json").read_text())["runtime"]["memory_format"] == "contiguous"
    assert weights(fold)["encoder.0.3.weight"].is_contiguous()


def test_precision_auto_is_decided_once(monkeypatch):
    """``auto`` keeps a resumed run's precision and takes the planning's on the CPU it was planned
    on; only otherwise does this process decide (here: a probe that says bf16)."""
    monkeypatch.setattr(device_module, "cpu_bf16_is_faster", lambda: True)
    monkeypatch.setattr(resolve, "cpu_identity", lambda: "CPU A")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    planned_here = {"precision": "fp32", "cpu": "CPU A"}
    assert resolve.auto_precision("auto", cpu, None, planned_here)[0] == "fp32"
    assert resolve.auto_precision("auto", cpu, None, {"precision": "fp32", "cpu": "CPU B"}) == ("bf16", None)
    assert resolve.auto_precision("auto", cpu, None, {"precision": "fp32"})[0] == "bf16"  # planned before "cpu"
    assert resolve.auto_precision("auto", cpu, None, None)[0] == "bf16"
    resumed = {"train_config": {"precision": "bf16"}}
    assert resolve.auto_precision("auto", cpu, resumed, planned_here) == ("bf16", "precision bf16, as the run started")
    assert resolve.auto_precision("auto", cpu, {"train_config": {"precision": "fp16"}}, None)[0] == "bf16"  # GPU run
    assert resolve.auto_precision("auto", cuda, None, planned_here)[0] == "fp16"  # the cpu timings are not cuda's
    assert resolve.auto_precision("fp32", cpu, resumed, {"precision": "bf16", "cpu": "CPU A"}) == ("fp32", None)


def test_layout_timings_of_another_precision_are_not_used(prepared):
    _set_timed_layouts(prepared, "channels_last", precision="bf16")
    plans = load_plans(prepared.preprocessed / "Dataset901_Synth" / "plans.json")
    throughput = json.loads((prepared.preprocessed / "Dataset901_Synth" / "throughput.json").read_text())
    cpu, cfg = torch.device("cpu"), small_config(1).with_(**{"runtime.precision": "fp32"})
    resolved, note = resolve.resolve_memory_format(cfg, plans, "3d_fullres", throughput, cpu)
    assert resolved.runtime.memory_format == "contiguous" and "timed in bf16, training runs in fp32" in note
    resolved, _ = resolve.resolve_memory_format(cfg.with_(**{"runtime.precision": "bf16"}), plans, "3d_fullres",
                                                 throughput, cpu)
    assert resolved.runtime.memory_format == "channels_last"
    resolved, note = resolve.resolve_memory_format(cfg, plans, "3d_fullres", None, cpu)  # no throughput.json
    assert resolved.runtime.memory_format == "contiguous" and "no timings" in note


def test_a_diverged_run_stops_marked_failed_and_its_model_is_refused(prepared, monkeypatch):
    """From the 4th step on every step's loss and gradients are NaN: the run stops after
    MAX_NON_FINITE_STEPS of them in a row with a message, writes no checkpoint_final, and the
    fold is refused by every use of its model until a run of it succeeds."""
    from autoseg.errors import UserFacingError
    from autoseg.training.health import FAILED_MARKER

    ws = prepared
    real_step, calls = fold_run.train_step, {"n": 0}

    def diverging_step(*args):
        calls["n"] += 1
        result = real_step(*args)
        return (float("nan"), float("nan")) if calls["n"] >= 4 else result

    monkeypatch.setattr(fold_run, "train_step", diverging_step)
    cfg = small_config(20).with_(**{"optim.initial_lr": 1e-3})
    with pytest.raises(UserFacingError, match=r"diverged: .*not finite \(NaN or inf\) for 20 steps in a row.*"
                                              r"--set optim.initial_lr=0.0001"):
        trainer.train_fold(ws, "901", "3d_fullres", 0, cfg, variant="nan", validate=False)
    fold = ws.results_dataset("901") / "3d_fullres" / "nan" / "fold_0"
    assert not (fold / "checkpoint_final.pth").exists() and (fold / FAILED_MARKER).is_file()
    assert json.loads((fold / FAILED_MARKER).read_text())["iteration"] == 3 + 19
    with pytest.raises(UserFacingError, match="its training failed: the loss or the gradients"):
        load_trained_model(fold, "checkpoint_latest")
    monkeypatch.setattr(fold_run, "train_step", real_step)
    trainer.train_fold(ws, "901", "3d_fullres", 0, small_config(1), variant="nan", validate=False)
    assert not (fold / FAILED_MARKER).exists() and load_trained_model(fold).network is not None


def test_a_non_finite_gradient_is_not_applied():
    net = torch.nn.Linear(2, 1)
    before = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.tensor([[float("inf"), 1.0]])
    loss, norm = steps.train_step(net, lambda out, target: out.sum(), opt, None, {"data": x, "target": x},
                                  torch.device("cpu"), 12.0)
    assert not torch.isfinite(torch.tensor(norm))
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


@pytest.mark.parametrize("setting, message", [
    ("initial_lr=inf", "optim.initial_lr must be a finite number, found inf"),
    ("weight_decay=nan", "optim.weight_decay must be a finite number, found nan"),
    ("optim.momentum=1", "optim.momentum must be in [0, 1), found 1.0"),
    ("optim.grad_clip=0", "optim.grad_clip must be > 0"),
])
def test_training_numbers_out_of_range_are_refused_when_parsed(workspace, setting, message, capsys):
    assert main(["train", "3d_fullres", "0", "-d", "901", "--root", str(workspace), "--set", setting]) == 2
    assert message in capsys.readouterr().err
