"""Training at full depth: schedules, accumulation, exact resume, early stopping, signals,
checkpoint averaging, and 2-process DDP on CPU (gloo). Non-finite steps, failed checkpoint
writes and kill -9 are in tests/test_reliability.py."""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from translator.checkpoint import load_checkpoint
from translator.cli import app
from translator.errors import TranslatorError
from translator.run import RunLayout
from translator.train.loop import Trainer, train
from translator.train.setup import lr_factor

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    "data": {"source": "builtin", "builtin_size": 400, "max_len": 40},
    "model": {"d_model": 32, "layers": 1, "heads": 2, "d_ff": 64, "dropout": 0.1},
    "training": {"epochs": 2, "max_tokens": 800, "lr": 0.003, "warmup_steps": 5,
                 "log_every": 1, "valid_max_sentences": 10, "examples": 0, "threads": 1},
}


def tiny_raw(run_dir: Path, **training: object) -> dict:
    raw = {k: dict(v) for k, v in TINY.items()}
    raw["training"].update(training)
    raw["output"] = {"dir": str(run_dir)}
    return raw


def tiny_config(run_dir: Path, **training: object):
    from translator.config import config_from_dict

    return config_from_dict(tiny_raw(run_dir, **training), name="tiny")


def write_config(path: Path, run_dir: Path, **training: object) -> Path:
    path.write_text(yaml.safe_dump(tiny_raw(run_dir, **training)), encoding="utf-8")
    return path


def test_lr_schedules() -> None:
    assert lr_factor(1, 10, "inverse_sqrt") == pytest.approx(0.1)
    assert lr_factor(10, 10, "inverse_sqrt") == pytest.approx(1.0)
    assert lr_factor(40, 10, "inverse_sqrt") == pytest.approx(0.5)
    assert lr_factor(10, 10, "cosine", total=110) == pytest.approx(1.0)
    assert lr_factor(60, 10, "cosine", total=110) == pytest.approx(0.5)
    assert lr_factor(110, 10, "cosine", total=110) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(500, 10, "constant") == 1.0


def test_accumulation_steps_scheduler_per_optimizer_step(tmp_path: Path) -> None:
    plain = Trainer(tiny_config(tmp_path / "a", epochs=1), quiet=True)
    n_batches = len(plain.sampler.batches())
    assert plain.run().state.step == n_batches
    accum = Trainer(tiny_config(tmp_path / "b", epochs=1, accum_steps=2), quiet=True)
    result = accum.run()
    assert result.state.step == math.ceil(n_batches / 2)
    assert accum.scheduler.last_epoch == result.state.step


def test_exact_resume_with_dropout_through_the_prefetching_loader(tmp_path: Path) -> None:
    """Dropout on, gradient accumulation, a stop in the middle of an epoch: the batches come
    from the background-thread DataLoader, which must neither repeat nor skip a batch nor
    touch the RNG the dropout masks come from, so stop + resume gives the same weights,
    optimizer state and validation loss as one uninterrupted run."""
    from translator.config import config_from_dict
    from translator.train.batches import epoch_groups

    def config(run: str, max_steps: int):
        raw = tiny_raw(tmp_path / run, epochs=3, accum_steps=2, log_every=2,
                       max_steps=max_steps)
        raw["model"]["dropout"] = 0.3
        return config_from_dict(raw, name="tiny")

    probe = Trainer(config("a", 9), quiet=True)
    steps_per_epoch = len(epoch_groups(probe.sampler, probe.dist, 0, 2))
    assert 2 < steps_per_epoch < 9  # the stop is mid-epoch and the resume crosses an epoch
    straight = probe.run()
    assert straight.state.step == 9 and 0.0 <= straight.data_wait_fraction < 1.0
    assert train(config("b", steps_per_epoch - 1), quiet=True).state.batch_in_epoch > 0
    resumed = train(config("b", 9), resume=True, quiet=True)
    assert resumed.state.step == 9
    a = load_checkpoint(RunLayout(tmp_path / "a").latest)
    b = load_checkpoint(RunLayout(tmp_path / "b").latest)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for k, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], b["optimizer"]["state"][k]["exp_avg"])
    assert resumed.last_valid["loss"] == straight.last_valid["loss"]


def test_step_batches_start_at_the_first_undone_step_and_count_tokens() -> None:
    """A resumed epoch collates only its undone steps, the same batches an uninterrupted
    epoch gets there, with each step's non-pad source + target token count."""
    from translator.data.dataset import BilingualDataset, BucketBatchSampler, collate
    from translator.data.tokenizer import PAD_ID
    from translator.train.batches import StepBatches, epoch_groups
    from translator.train.distributed import Dist

    rows = [[4 + (i % 7)] * (1 + i % 9) for i in range(60)]
    data = BilingualDataset(rows, [r[::-1] + [5] for r in rows], max_len=20)
    sampler = BucketBatchSampler(data, max_tokens=60, seed=3)
    groups = epoch_groups(sampler, Dist(), epoch=1, accum_steps=2)
    assert groups == epoch_groups(sampler, Dist(), epoch=1, accum_steps=2)  # (seed, epoch)
    steps = list(StepBatches(data, groups, start=2, pin=False).prefetch(depth=2))
    assert len(steps) == len(groups) - 2
    for step, group in zip(steps, groups[2:], strict=True):
        assert len(step.micro) == len(group)
        for batch, idx in zip(step.micro, group, strict=True):
            assert torch.equal(batch.src, collate([data[i] for i in idx]).src)
        assert step.tokens == sum(int((b.src != PAD_ID).sum() + (b.tgt_out != PAD_ID).sum())
                                  for b in step.micro)


def test_prefetcher_hands_errors_to_the_loop_and_stops_early() -> None:
    from translator.train.batches import Prefetcher

    def failing():
        yield 1
        raise ValueError("bad batch")

    it = Prefetcher(failing(), 2)
    assert next(it) == 1
    with pytest.raises(ValueError, match="bad batch"):
        next(it)
    it.close()
    endless = Prefetcher(iter(range(10**9)), 2)
    assert next(endless) == 0
    endless.close()  # a run that stops mid-epoch: the thread ends, nothing blocks
    assert not endless._thread.is_alive()
    done = Prefetcher(iter([7]), 2)
    assert list(done) == [7] and next(done, None) is None


def test_bf16_autocast_on_cpu_trains(tmp_path: Path) -> None:
    result = train(tiny_config(tmp_path / "r", precision="bf16", max_steps=3), quiet=True)
    assert result.state.step == 3
    ckpt = load_checkpoint(RunLayout(tmp_path / "r").latest)
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values()
               if v.is_floating_point())


def test_fp16_needs_cuda(tmp_path: Path) -> None:
    with pytest.raises(TranslatorError, match="fp16"):
        Trainer(tiny_config(tmp_path / "r", precision="fp16"), device="cpu", quiet=True)


def test_early_stopping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scores = iter([10.0, 9.0, 8.0, 7.0, 6.0, 5.0])

    def fake_validate(self: Trainer) -> dict:
        return {"bleu": next(scores), "chrf": 0.0, "loss": 1.0}

    monkeypatch.setattr(Trainer, "validate", fake_validate)
    result = train(tiny_config(tmp_path / "r", epochs=50, valid_every=1, patience=2),
                   quiet=True)
    assert result.state.step == 3  # best at step 1, no better at steps 2 and 3
    assert result.state.best_score == 10.0
    assert load_checkpoint(RunLayout(tmp_path / "r").best)["step"] == 1


def test_average_command(tmp_path: Path) -> None:
    train(tiny_config(tmp_path / "r", max_steps=4, save_every=1, keep_last=3), quiet=True)
    layout = RunLayout(tmp_path / "r")
    paths = layout.numbered_checkpoints()
    assert len(paths) == 3  # 4 saved, the oldest pruned
    res = CliRunner().invoke(app, ["average", "--run", str(tmp_path / "r"), "--last", "3"])
    assert res.exit_code == 0, res.output
    avg = load_checkpoint(layout.checkpoints / "averaged.pt")
    models = [load_checkpoint(p)["model"] for p in paths]
    name = "projection.proj.bias"
    assert torch.allclose(avg["model"][name], sum(m[name] for m in models) / 3)
    res = CliRunner().invoke(app, ["translate", "The dog sees the cat.", "--run",
                                   str(tmp_path / "r"), "--checkpoint",
                                   str(layout.checkpoints / "averaged.pt")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["average", "--run", str(tmp_path / "r"), "--last", "9"])
    assert res.exit_code == 2 and "fewer than" in res.output


def test_quality_suite_picks_among_best_and_each_average(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The quality benchmark scores best.pt and one average per K it can make on
    validation, keeps each average on disk for `translator evaluate`, and returns the best."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    from bench.quality import _pick_checkpoint

    from translator.decode.translator import Translator
    from translator.evaluate import evaluate_pairs

    run = tmp_path / "r"
    train(tiny_config(run, max_steps=6, save_every=1, keep_last=5), quiet=True)
    valid = [("The dog sees the cat.", "Der Hund sieht die Katze."),
             ("The cat sees the dog.", "Die Katze sieht den Hund.")]
    _, label, bleu = _pick_checkpoint(run, [3, 5, 9], valid)
    ckpts = RunLayout(run).checkpoints
    assert (ckpts / "averaged_last3.pt").is_file() and (ckpts / "averaged_last5.pt").is_file()
    assert not (ckpts / "averaged_last9.pt").exists()  # only 5 checkpoints were kept
    scores = {}
    for name, path in [("best", ckpts / "best.pt"),
                       ("average of last 3", ckpts / "averaged_last3.pt"),
                       ("average of last 5", ckpts / "averaged_last5.pt")]:
        tr = Translator.from_run(run, checkpoint=path, device="cpu")
        scores[name] = evaluate_pairs(tr, valid, beam_size=1)[0]["bleu"]
    assert bleu == max(scores.values()) and scores[label] == bleu


def _start_training(config: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "translator", "train", "--config",
                             str(config), "--quiet", *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for training")
        time.sleep(0.05)


@pytest.mark.parametrize(("sig", "name"), [(signal.SIGINT, "Ctrl-C"),
                                           (signal.SIGTERM, "SIGTERM")])
def test_stop_signal_saves_checkpoint_and_resume_continues(sig: int, name: str,
                                                           tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "tiny.yaml", run_dir, epochs=1000, save_every=3)
    layout = RunLayout(run_dir)
    proc = _start_training(config)
    _wait_for(lambda: layout.latest.is_file(), proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    # A stop the user asked for is no error: a calm line saying where it stopped.
    found = re.search(rf"^stopped by {name} at step (\d+) ", err, re.M)
    assert "error:" not in err and found, err
    # The stop itself wrote a checkpoint: latest.pt holds the step the line names (not only
    # the last periodic save, which is a multiple of save_every).
    stopped = load_checkpoint(layout.latest)["step"]
    assert stopped == int(found[1]) and stopped >= 1
    result = train(tiny_config(run_dir, epochs=1000, save_every=3, max_steps=stopped + 2),
                   resume=True, quiet=True)
    assert result.state.step == stopped + 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_WORKER = textwrap.dedent("""
    import sys, torch, yaml
    from translator.config import config_from_dict
    from translator.train.loop import Trainer
    raw = yaml.safe_load(open(sys.argv[1]))
    trainer = Trainer(config_from_dict(raw, name="ddp"), quiet=True)
    params = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.run()
    state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    torch.save({"state": state, "step": result.state.step, "moved": any(
        not torch.equal(params[k], state[k]) for k in state)}, sys.argv[2])
""")


def test_ddp_two_cpu_processes_stay_in_sync(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "tiny.yaml", run_dir, epochs=5, max_steps=4)
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER, encoding="utf-8")
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, str(script), str(config),
                                       str(tmp_path / f"rank{rank}.pt")], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["step"] == r1["step"] == 4
    assert r0["moved"] and r1["moved"]
    for name in r0["state"]:
        assert torch.equal(r0["state"][name], r1["state"][name]), name
    ckpt = load_checkpoint(RunLayout(run_dir).latest)
    for name, value in ckpt["model"].items():
        assert torch.equal(value, r0["state"][name]), name
    # Only rank 0 wrote: one TensorBoard event file.
    assert len(list(RunLayout(run_dir).tensorboard.glob("events.out.tfevents.*"))) == 1


def test_planned_epochs_takes_the_tightest_budget() -> None:
    from translator.config import TrainingConfig
    from translator.train.book import planned_epochs

    tc = TrainingConfig(epochs=30)
    assert planned_epochs(tc, 1, 100, 60.0, 1.0) == 30
    tc = TrainingConfig(epochs=30, max_steps=1000)
    assert planned_epochs(tc, 1, 100, 60.0, 1.0) == pytest.approx(10)
    # 60 minutes at 3 minutes an epoch, 3 of them used by the first: 1 + 57/3 = 20 epochs.
    tc = TrainingConfig(epochs=100000, max_minutes=60)
    assert planned_epochs(tc, 1, 245, 180.0, 3.0) == pytest.approx(20)
    assert planned_epochs(TrainingConfig(epochs=100000, max_minutes=12), 1, 245, 180.0,
                          3.0) == pytest.approx(4)


def test_dropout_advice_follows_the_epoch_count() -> None:
    from translator.train.book import dropout_advice

    assert "model.dropout=0.3" in dropout_advice(20, 0.1)
    assert "model.dropout=0.1" in dropout_advice(4, 0.3)
    # Suited, or in the even middle: no hint.
    for epochs, dropout in [(20, 0.3), (4, 0.1), (10, 0.1), (10, 0.3), (20, 0.2)]:
        assert dropout_advice(epochs, dropout) == ""


def test_training_logs_the_dropout_hint_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="translator")
    raw = tiny_raw(tmp_path / "short", epochs=3)
    raw["model"]["dropout"] = 0.3
    from translator.config import config_from_dict

    Trainer(config_from_dict(raw, name="tiny"), quiet=True).run()
    hints = [r.getMessage() for r in caplog.records if "usually" in r.getMessage()]
    assert len(hints) == 1 and "about 3 epochs" in hints[0] and "dropout=0.1" in hints[0]
    caplog.clear()
    Trainer(tiny_config(tmp_path / "suited", epochs=3), quiet=True).run()
    assert not [r for r in caplog.records if "usually" in r.getMessage()]
