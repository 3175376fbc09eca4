"""Run directories and hostile command lines (issue 13, item 5 and "everything else"):
a directory belongs to one run (identity, lock, --overwrite, resume checks), SIGTERM and
numerical failures save what was done, and every hostile invocation is one error line."""
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

import fastppo
from fastppo import _io, runs, sweeps
from fastppo._errors import UsageError
from fastppo.cli import main

SMALL = "garnet:S=200,A=4,b=3,seed=0"
TINY = "garnet:S=30,A=3,b=3,seed=0"


def run_cli(*args):
    """(status, stderr) of the command line run in this process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(list(args))
    return status, err.getvalue()


def one_error_line(status, err, expected_status=2):
    assert status == expected_status, err
    assert err.startswith("fastppo: error: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err.removeprefix("fastppo: error: ").rstrip("\n")


def identity(folder):
    with open(os.path.join(folder, _io.RUN), encoding="utf-8") as f:
        return json.load(f)


def checkpoint_run_id(folder):
    with np.load(os.path.join(folder, _io.CHECKPOINT)) as f:
        return str(f["run_id"]) if "run_id" in f.files else None


def dead_pid():
    """The pid of a process of this host that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(folder, **holder):
    with open(os.path.join(folder, _io.LOCK), "w", encoding="utf-8") as f:
        json.dump({"host": socket.gethostname(), "pid": os.getpid(), "run_id": "ab" * 16,
                   "started": "2025-01-01 00:00:00", **holder}, f)


# ------------------------------------------------------------------ identity and overwrite
def test_a_run_writes_its_identity_first_and_its_checkpoints_carry_it(tmp_path, monkeypatch):
    folder = str(tmp_path / "d")
    seen = []
    real_solve = fastppo.solve

    def solve(*a, **k):  # J* is solved after the identity is written (and the lock taken)
        seen.append(sorted(os.listdir(folder)))
        return real_solve(*a, **k)

    monkeypatch.setattr(fastppo, "solve", solve)
    assert run_cli("run", "--mdp", TINY, "--iters", "3", "--out", folder, "--quiet")[0] == 0
    assert seen == [[_io.LOCK, _io.RUN]]
    ident = identity(folder)
    assert len(ident["run_id"]) == 32 and int(ident["run_id"], 16) >= 0
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    assert ident["params_sha256"] == runs.params_digest(config["params"])
    assert ident["params"]["mdp"] == TINY and ident["params"]["tau"] == 0.1
    assert checkpoint_run_id(folder) == ident["run_id"]
    assert fastppo.PPOClip.resume(folder).run_id == ident["run_id"]
    assert not os.path.exists(os.path.join(folder, _io.LOCK))  # released at the end
    # a resume keeps the identity and the id in the checkpoint
    assert run_cli("run", "--resume", folder, "--iters", "5", "--quiet")[0] == 0
    assert identity(folder) == ident and checkpoint_run_id(folder) == ident["run_id"]


def test_a_new_run_refuses_a_directory_holding_another_unless_overwrite(tmp_path):
    folder = str(tmp_path / "d")
    assert run_cli("run", "--mdp", TINY, "--tau", "0.1", "--iters", "3", "--out", folder,
                   "--quiet")[0] == 0
    old = identity(folder)
    message = one_error_line(*run_cli("run", "--mdp", TINY, "--tau", "0.3", "--iters", "3",
                                      "--out", folder))
    assert message == (f"{folder} already holds run {old['run_id']} of {old['created']}: continue "
                       f"it with fastppo run --resume {folder}, or replace it with --overwrite")
    assert identity(folder) == old  # untouched
    (tmp_path / "d" / "notes.txt").write_text("mine")
    assert run_cli("run", "--mdp", TINY, "--tau", "0.3", "--iters", "2", "--out", folder,
                   "--quiet", "--overwrite")[0] == 0
    new = identity(folder)
    assert new["run_id"] != old["run_id"] and new["params"]["tau"] == 0.3
    assert checkpoint_run_id(folder) == new["run_id"]
    with np.load(tmp_path / "d" / "result.npz") as f:
        assert int(f["n_iter"]) == 2
    assert (tmp_path / "d" / "notes.txt").read_text() == "mine"  # not a file of the run
    # --overwrite is for new runs only
    assert one_error_line(*run_cli("run", "--resume", folder, "--overwrite")) == (
        "--overwrite starts a new run: it cannot be used with --resume")


def test_a_directory_of_results_from_python_or_an_old_fastppo_is_refused_too(tmp_path):
    fastppo.PPOClip(fastppo.garnet(10, 2, 2, seed=0)).run(1).save(tmp_path / "api")
    message = one_error_line(*run_cli("run", "--mdp", TINY, "--out", str(tmp_path / "api")))
    assert message.startswith(f"{tmp_path / 'api'} already holds a run (checkpoint.npz, "
                              f"result.npz, history.csv)")


def test_a_run_that_saved_nothing_is_replaced_without_asking(tmp_path, monkeypatch):
    folder = str(tmp_path / "d")

    def fail(*a, **k):
        raise fastppo.ConvergenceError("solve did not converge")

    monkeypatch.setattr(fastppo, "solve", fail)
    one_error_line(*run_cli("run", "--mdp", TINY, "--out", folder), expected_status=1)
    assert sorted(os.listdir(folder)) == [_io.RUN]
    monkeypatch.undo()
    assert run_cli("run", "--mdp", TINY, "--iters", "2", "--out", folder, "--quiet")[0] == 0


def test_new_run_killed_before_its_first_checkpoint_is_not_resumed_as_the_old_one(tmp_path,
                                                                                monkeypatch):
    """The reproduction of issue 13, item 5: a τ = 0.3 run started (with --overwrite) in the
    directory of a τ = 0.1 run and stopped before its first checkpoint must not --resume
    the τ = 0.1 run."""
    folder = str(tmp_path / "d")
    assert run_cli("run", "--mdp", TINY, "--tau", "0.1", "--iters", "3", "--out", folder,
                   "--quiet")[0] == 0
    saved = tmp_path / "old"
    shutil.copytree(folder, saved)

    def killed(*a, **k):  # the process dies while solving for J*
        raise KeyboardInterrupt

    monkeypatch.setattr(fastppo, "solve", killed)
    assert run_cli("run", "--mdp", TINY, "--tau", "0.3", "--iters", "3", "--out", folder,
                   "--overwrite")[0] == 130
    monkeypatch.undo()
    assert sorted(os.listdir(folder)) == [_io.RUN] and identity(folder)["params"]["tau"] == 0.3
    message = one_error_line(*run_cli("run", "--resume", folder, "--iters", "5"))
    assert message == (f"--resume {folder}: no checkpoint there: its run stopped before its "
                       f"first checkpoint (start it again with --overwrite)")

    # killed after writing its identity, before deleting the old files: the old checkpoint
    # (of another run) is refused
    new_id = identity(folder)["run_id"]
    for name in ("checkpoint.npz", "mdp.npz", "config.json"):
        shutil.copy(saved / name, os.path.join(folder, name))
    message = one_error_line(*run_cli("run", "--resume", folder, "--iters", "5"))
    assert message == (f"{folder}: config.json holds other parameters than the run {new_id} of "
                       f"run.json (two runs mixed in one directory): start again with --overwrite")
    config = json.loads((saved / "config.json").read_text())
    config["params"]["tau"] = 0.3  # even with a config.json of the new run's parameters
    (tmp_path / "d" / "config.json").write_text(json.dumps(config))
    message = one_error_line(*run_cli("run", "--resume", folder, "--iters", "5"))
    old_id = identity(saved)["run_id"]
    assert message == (f"{folder}: checkpoint.npz is of run {old_id}, not of the run {new_id} of "
                       f"run.json (two runs mixed in one directory): start again with --overwrite")
    # a checkpoint saved from Python (no run id) is not the run's either
    fastppo.PPOClip.resume(saved).save(folder)  # the loaded run id is kept: strip it
    entries = dict(np.load(os.path.join(folder, "checkpoint.npz")))
    entries.pop("run_id")
    np.savez(os.path.join(folder, "checkpoint.npz"), **entries)
    assert "checkpoint.npz is of no run (saved from Python)" in one_error_line(
        *run_cli("run", "--resume", folder, "--iters", "5"))


def test_a_directory_without_identity_is_adopted_on_resume(tmp_path):
    folder = str(tmp_path / "d")
    assert run_cli("run", "--mdp", TINY, "--iters", "3", "--out", folder, "--quiet")[0] == 0
    os.remove(os.path.join(folder, _io.RUN))  # as written by fastppo before run.json
    entries = dict(np.load(os.path.join(folder, "checkpoint.npz")))
    entries.pop("run_id")
    np.savez(os.path.join(folder, "checkpoint.npz"), **entries)
    assert run_cli("run", "--resume", folder, "--iters", "5", "--quiet")[0] == 0
    ident = identity(folder)
    assert checkpoint_run_id(folder) == ident["run_id"]
    with np.load(os.path.join(folder, "result.npz")) as f:
        assert np.array_equal(f["logits"], fastppo.PPOClip(
            runs.parse_mdp(TINY), fastppo.ForwardKL(0.1)).run(5).logits)


def test_damaged_config_on_resume_names_the_file(tmp_path):
    folder = tmp_path / "d"
    assert run_cli("run", "--mdp", TINY, "--iters", "2", "--out", str(folder), "--quiet")[0] == 0
    config = json.loads((folder / "config.json").read_text())
    for params, message in [({**config["params"], "tau": "x"}, "run parameter 'tau' must be a "
                                                                "number, got 'x'"),
                            ([1, 2], "params must be an object, got list")]:
        (folder / "config.json").write_text(json.dumps({**config, "params": params}))
        assert one_error_line(*run_cli("run", "--resume", str(folder), "--iters", "3")) == (
            f"{folder / 'config.json'}: {message}")


def test_damaged_identity_is_one_line(tmp_path):
    folder = str(tmp_path / "d")
    assert run_cli("run", "--mdp", TINY, "--iters", "2", "--out", folder, "--quiet")[0] == 0
    path = os.path.join(folder, _io.RUN)
    for content, message in [("{", f"cannot read {path}: Expecting property name"),
                             ('{"run_id": "x", "params_sha256": "y"}',
                              f"{path}: not a fastppo run identity")]:
        with open(path, "w") as f:
            f.write(content)
        assert one_error_line(*run_cli("run", "--resume", folder, "--iters", "3")).startswith(
            message)


# ------------------------------------------------------------------------------ the lock
def test_a_stale_lock_is_reported_never_broken(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    pid = dead_pid()
    write_lock(folder, pid=pid)
    lock = folder / _io.LOCK
    before = lock.read_text()
    message = one_error_line(*run_cli("run", "--mdp", TINY, "--out", str(folder)))
    assert message == (f"{folder} is locked by run {'ab' * 16} (pid {pid} on {socket.gethostname()}, "
                       f"started 2025-01-01 00:00:00), which is no longer running (it was "
                       f"killed): if no other fastppo run is writing to {folder}, delete {lock}")
    assert lock.read_text() == before and sorted(os.listdir(folder)) == [_io.LOCK]
    os.remove(lock)  # as the message says
    assert run_cli("run", "--mdp", TINY, "--iters", "2", "--out", str(folder), "--quiet")[0] == 0
    # --resume reports the lock first, before looking for a checkpoint
    write_lock(folder, pid=pid)
    assert "which is no longer running" in one_error_line(
        *run_cli("run", "--resume", str(folder), "--iters", "3"))


def test_a_lock_held_by_a_running_process_or_another_host(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    lock = folder / _io.LOCK
    write_lock(folder)  # this very process: alive
    assert one_error_line(*run_cli("run", "--mdp", TINY, "--out", str(folder))).endswith(
        f"which is still running (if pid {os.getpid()} is another program, delete {lock})")
    write_lock(folder, host="elsewhere.example", pid=1)
    assert one_error_line(*run_cli("run", "--mdp", TINY, "--out", str(folder))) == (
        f"{folder} is in use by run {'ab' * 16} (pid 1 on elsewhere.example, started "
        f"2025-01-01 00:00:00); if that process is no longer running, delete {lock}")
    for content in ("", '{"pid": -3, "host": "h", "run_id": "r"}'):
        lock.write_text(content)  # e.g. a run killed between creating and writing it
        assert one_error_line(*run_cli("run", "--mdp", TINY, "--out", str(folder))).startswith(
            f"{folder} is locked by another run ({lock} exists but cannot be read: ")
        assert lock.read_text() == content


def test_the_lock_is_released_on_every_exit(tmp_path, monkeypatch):
    folder = tmp_path / "d"

    def fail(*a, **k):
        raise ValueError("a bug")

    monkeypatch.setattr(fastppo, "solve", fail)
    with pytest.raises(ValueError, match="a bug"):
        main(["run", "--mdp", TINY, "--out", str(folder)])
    assert not (folder / _io.LOCK).exists()


def test_a_lock_taken_over_by_another_run_is_not_removed(tmp_path):
    folder = str(tmp_path)
    with _io.locked(folder, "a" * 32):
        os.remove(os.path.join(folder, _io.LOCK))
        write_lock(folder, run_id="b" * 32)
    assert json.loads((tmp_path / _io.LOCK).read_text())["run_id"] == "b" * 32


@pytest.mark.slow
def test_two_simultaneous_runs_into_one_directory(tmp_path):
    """Two real processes: the second is refused naming the first; SIGTERM then stops the
    first after its current iteration, saved (exit 143), and it resumes bit for bit."""
    folder = tmp_path / "run"
    args = ["--mdp", "garnet:S=2000,A=4,b=5,seed=0", "--step-scale", "0.05", "--backend", "cython"]
    first = subprocess.Popen([sys.executable, "-m", "fastppo", "run", *args, "--iters", "100000",
                              "--tol", "1e-30", "--out", str(folder), "--no-progress", "--quiet"],
                             stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    deadline = time.monotonic() + 120
    while not (folder / "config.json").exists():  # J* solved: the iterations are running
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.01)
    second = subprocess.run([sys.executable, "-m", "fastppo", "run", *args, "--iters", "3",
                             "--out", str(folder), "--overwrite"], capture_output=True, text=True,
                            env=dict(os.environ), timeout=120)
    run_id = identity(folder)["run_id"]
    assert second.returncode == 2 and second.stderr == (
        f"fastppo: error: {folder} is in use by run {run_id} (pid {first.pid} on "
        f"{socket.gethostname()}, started {json.loads((folder / _io.LOCK).read_text())['started']}"
        f"), which is still running (if pid {first.pid} is another program, delete "
        f"{folder / _io.LOCK})\n")
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 143, err
    with np.load(folder / "result.npz") as f:
        k = int(f["n_iter"])
    assert err == (f"fastppo: terminated at iteration {k}; saved to {folder} "
                   f"(continue with: fastppo run --resume {folder})\n")
    assert not (folder / _io.LOCK).exists() and checkpoint_run_id(folder) == run_id
    r = subprocess.run([sys.executable, "-m", "fastppo", "run", "--resume", str(folder), "--iters",
                        str(k + 2), "--quiet"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with np.load(folder / "result.npz") as f:
        assert np.array_equal(f["logits"], fastppo.PPOClip(
            runs.parse_mdp("garnet:S=2000,A=4,b=5,seed=0"), fastppo.ForwardKL(0.1),
            step_scale=0.05, backend="cython").run(k + 2).logits)


@pytest.mark.slow
def test_sigterm_during_the_optimum_solve_saves_the_start(tmp_path):
    """SIGTERM while J* is solved (before the first iteration, unless the machine is very
    fast): the run stops before iterating, saved."""
    folder = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "fastppo", "run", "--mdp",
                             "garnet:S=10000,A=10,b=10,seed=0", "--out", str(folder),
                             "--no-progress", "--quiet"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (folder / _io.RUN).exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143 and err.startswith("fastppo: terminated at iteration "), err
    k = int(err.split("iteration ")[1].split(";")[0])
    assert k <= 1 and fastppo.PPOClip.resume(folder).n_iter == k


# ---------------------------------------------------------------- failures save their work
def test_a_failing_run_keeps_its_iterations_python_api():
    mdp = runs.parse_mdp(TINY)
    ppo = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.1), lr=100)
    with pytest.raises(FloatingPointError, match="at iteration 4 "):
        ppo.run(50)
    assert ppo.n_iter == 3 and len(ppo.history) == 3
    expected = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.1), lr=100).run(3)
    assert np.array_equal(ppo.logits, expected.logits.reshape(-1))
    assert np.array_equal(ppo.history["J"], expected.history["J"])
    res = ppo.result()  # the RunResult of the 3 iterations
    assert res.n_iter == 3 and res.J == expected.J and not res.converged
    with pytest.raises(FloatingPointError, match="at iteration 4 "):  # deterministic
        ppo.run(1)
    # SampledPPO: the random generator is put back too
    sampled = fastppo.SampledPPO(mdp, fastppo.ReverseKL(0.1), lr=1e6, seed=0, n_envs=64)
    with pytest.raises(FloatingPointError, match="SampledPPO: the policy underflowed to 0 at "
                                                 r"iteration 1 \(pair \(s=\d+, a=\d+\); the logits"):
        sampled.run(3)
    fresh = fastppo.SampledPPO(mdp, fastppo.ReverseKL(0.1), lr=1e6, seed=0, n_envs=64)
    assert sampled.n_iter == 0 and sampled.rng.random() == fresh.rng.random()
    assert np.array_equal(sampled.logits, fresh.logits)


def test_a_failing_run_saves_its_iterations_command_line(tmp_path):
    folder = str(tmp_path / "d")
    message = one_error_line(*run_cli("run", "--mdp", TINY, "--lr", "100", "--iters", "50",
                                      "--out", folder), expected_status=1)
    assert message.startswith("FloatingPointError: PPOClip: the policy underflowed to 0 at "
                              "iteration 4 ")
    assert message.endswith(f"; the 3 iterations before it are saved in {folder}")
    expected = fastppo.PPOClip(runs.parse_mdp(TINY), fastppo.ForwardKL(0.1), lr=100).run(3)
    with np.load(os.path.join(folder, "result.npz")) as f:
        assert int(f["n_iter"]) == 3 and np.array_equal(f["logits"], expected.logits)
        assert float(f["J"]) == expected.J
    assert len(_io.read_history(os.path.join(folder, "history.csv"))) == 3
    assert fastppo.PPOClip.resume(folder).n_iter == 3
    assert not os.path.exists(os.path.join(folder, _io.LOCK))
    # nothing done: nothing said
    message = one_error_line(*run_cli("run", "--mdp", TINY, "--lr", "1e6", "--iters", "5",
                                      "--out", str(tmp_path / "e")), expected_status=1)
    assert "saved" not in message and "at iteration 1 " in message


def test_when_even_the_last_good_iterate_cannot_be_evaluated_the_checkpoint_is_saved(
        tmp_path, monkeypatch):
    folder = str(tmp_path / "d")
    real_step = fastppo.PPOClip.step

    def step(self):
        if self.n_iter == 2:
            raise fastppo.ConvergenceError("evaluate did not reach tol")
        return real_step(self)

    def final(self):
        raise fastppo.ConvergenceError("evaluate did not reach tol")

    monkeypatch.setattr(fastppo.PPOClip, "step", step)
    monkeypatch.setattr(fastppo.PPOClip, "_final", final)
    message = one_error_line(*run_cli("run", "--mdp", TINY, "--iters", "5", "--out", folder),
                             expected_status=1)
    assert message == (f"ConvergenceError: evaluate did not reach tol; the 2 iterations before "
                       f"it are saved in {folder}")
    assert not os.path.exists(os.path.join(folder, "result.npz"))
    assert len(_io.read_history(os.path.join(folder, "history.csv"))) == 2
    monkeypatch.undo()
    assert fastppo.PPOClip.resume(folder).n_iter == 2


def test_resume_keeps_checkpoint_every(tmp_path, monkeypatch):
    folder = str(tmp_path / "d")
    assert run_cli("run", "--mdp", TINY, "--iters", "3", "--out", folder, "--quiet",
                   "--checkpoint-every", "2")[0] == 0
    assert json.loads((tmp_path / "d" / "config.json").read_text())["checkpoint_every"] == 2
    saved_at = []
    real_save = fastppo.PPOClip.save

    def save(self, path):
        saved_at.append(self.n_iter)
        return real_save(self, path)

    monkeypatch.setattr(fastppo.PPOClip, "save", save)
    assert run_cli("run", "--resume", folder, "--iters", "9", "--quiet")[0] == 0
    assert saved_at == [4, 6, 8]
    saved_at.clear()
    assert run_cli("run", "--resume", folder, "--iters", "12", "--quiet",
                   "--checkpoint-every", "3")[0] == 0  # changed: kept from now on
    assert saved_at == [12] and json.loads(
        (tmp_path / "d" / "config.json").read_text())["checkpoint_every"] == 3
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    config["checkpoint_every"] = "often"
    (tmp_path / "d" / "config.json").write_text(json.dumps(config))
    assert one_error_line(*run_cli("run", "--resume", folder, "--iters", "13")) == (
        f"{tmp_path / 'd' / 'config.json'}: checkpoint_every must be >= 1, got 'often'")


# ------------------------------------------------------------------------ method checks
@pytest.mark.parametrize("make", [
    lambda mdp, r: fastppo.PPOClip(mdp, reference=r), lambda mdp, r: fastppo.NPG(mdp, reference=r),
    lambda mdp, r: fastppo.SampledPPO(mdp, reference=r)])
def test_reference_must_be_finite(make):
    mdp = fastppo.garnet(10, 2, 2, seed=0)
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match=f"reference must be finite, got {bad}"):
            make(mdp, bad)


def test_no_stall_warning_at_the_optimum():
    """At the optimum J stops moving while the gradient norm is still at round-off of the
    scale of Q (J moves by about its square): no ConvergenceWarning, at any reward scale
    (the rule, not one example); a real stall still warns."""
    base = fastppo.garnet(50, 3, 3, seed=0)
    for c in (1e-12, 1e-6, 1.0, 1e6, 1e9):
        mdp = fastppo.MDP(base.a_indptr, base.a_indices, base.p_indptr, base.p_indices,
                          base.p_data, base.r * c, base.gamma, base.rho)
        # steps that scale with the rewards: 1/τ, and 1/((1 − γ) c) without a regularizer
        for reg, lr in ((fastppo.ReverseKL(0.1 * c), None), (None, 1 / ((1 - mdp.gamma) * c))):
            with warnings.catch_warnings():
                warnings.simplefilter("error", fastppo.ConvergenceWarning)
                res = fastppo.NPG(mdp, reg, lr=lr, reference=True).run(60)
            if c >= 1e-6:  # (J* itself at 1e-12 is the reward-scale issue's)
                assert abs(res.gap) <= 1e-12 * abs(res.J)  # it is at the optimum
    mdp = fastppo.garnet(12, 3, 3, seed=2, gamma=0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastppo.ConvergenceWarning)
        res = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.5), reference=True).run(60)
    assert res.gap <= 1e-12 and res.history["grad_norm"][-1] < 1e-9
    with pytest.warns(fastppo.ConvergenceWarning, match="stalled"):
        fastppo.PPOClip(mdp, fastppo.ForwardKL(0.5), step_scale=3.0).run(200)


def test_threads_beyond_the_machine_are_refused():
    limit = os.cpu_count()
    message = f"n_threads must be <= {limit} (the CPUs of this machine, os.cpu_count()), got 20000"
    mdp = fastppo.garnet(10, 2, 2, seed=0)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fastppo.evaluate(mdp, mdp.uniform_policy(), n_threads=20000)
    with pytest.raises(ValueError, match="n_threads must be <="):
        fastppo.set_num_threads(limit + 1)
    with pytest.raises(ValueError, match="n_threads must be <="):
        fastppo.PPOClip(mdp, n_threads=limit + 1)
    assert fastppo._backend.resolve_threads(limit) == limit
    assert one_error_line(*run_cli("solve", "--mdp", "chain:n_states=5", "--threads",
                                   "20000")) == message


def test_env_threads_beyond_the_machine_names_the_variable(monkeypatch):
    monkeypatch.setenv("FASTPPO_NUM_THREADS", str(os.cpu_count() + 1))
    message = (f"environment variable FASTPPO_NUM_THREADS='{os.cpu_count() + 1}': must be "
               f"<= {os.cpu_count()} (the CPUs of this machine, os.cpu_count())")
    assert one_error_line(*run_cli("info")) == message
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fastppo.evaluate(fastppo.chain(3), fastppo.chain(3).uniform_policy())  # the API too
    monkeypatch.setenv("FASTPPO_NUM_THREADS", "abc")
    with pytest.raises(ValueError, match="FASTPPO_NUM_THREADS='abc': must be a positive integer"):
        fastppo._backend.resolve_threads()


def test_sampled_batch_larger_than_memory_is_refused_before_allocating():
    mdp = fastppo.garnet(10, 2, 2, seed=0)
    with pytest.raises(ValueError, match=r"n_envs x horizon = 1000000000 x 459 steps would need "
                                         r"about [\d.e+]+ GiB \(160 bytes a step\), more than the "
                                         r"[\d.]+ GiB of memory of this machine"):
        fastppo.SampledPPO(mdp, n_envs=10**9)
    with pytest.raises(ValueError, match="n_envs x horizon = 1 x 1000000000000000 steps"):
        fastppo.SampledPPO(mdp, n_envs=1, horizon=10**15)
    with pytest.raises(ValueError, match="n_envs x horizon = 4 x 100000000000000 steps"):
        fastppo.rollout(mdp, mdp.uniform_policy(), 4, 10**14)
    assert fastppo.rollout(mdp, mdp.uniform_policy(), 4, 6, seed=0).states.shape == (4, 6)


# ---------------------------------------------------------------- hostile command lines
def _bad_npz_files(tmp_path):
    folder = tmp_path / "res"
    assert run_cli("run", "--mdp", TINY, "--iters", "2", "--out", str(folder), "--quiet")[0] == 0
    data = (folder / "mdp.npz").read_bytes()
    (tmp_path / "half.npz").write_bytes(data[:len(data) // 2])
    (tmp_path / "empty.npz").write_bytes(b"")
    shutil.copy(folder / "checkpoint.npz", tmp_path / "renamed.npz")  # another kind of npz
    with np.load(folder / "mdp.npz") as f:
        np.savez(tmp_path / "missing.npz", **{k: f[k] for k in f.files if k != "p_data"})
    for name, content in [("result-half", (folder / "result.npz").read_bytes()[:300]),
                          ("result-empty", b"")]:
        shutil.copytree(folder, tmp_path / name)
        (tmp_path / name / "result.npz").write_bytes(content)
    shutil.copytree(folder, tmp_path / "mdp-half")
    (tmp_path / "mdp-half" / "mdp.npz").write_bytes(data[:100])
    np.save(tmp_path / "wrong.npy", np.zeros((3, 3)))
    return folder


HOSTILE = [  # (arguments, expected status, a part of the one error line)
    (["solve", "--mdp-file", "{t}/half.npz"], 2, "cannot read an MDP from {t}/half.npz"),
    (["solve", "--mdp-file", "{t}/empty.npz"], 2, "cannot read an MDP from {t}/empty.npz"),
    (["solve", "--mdp-file", "{t}/renamed.npz"], 2, "is not a fastppo MDP file"),
    (["solve", "--mdp-file", "{t}/missing.npz"], 2, "field 'p_data' is missing"),
    (["run", "--mdp-file", "{t}/missing.npz", "--out", "{t}/o"], 2, "field 'p_data' is missing"),
    (["eval", "{t}/result-half"], 2, "cannot read {t}/result-half/result.npz: "),
    (["eval", "{t}/result-empty"], 2, "cannot read {t}/result-empty/result.npz: "),
    (["eval", "{t}/mdp-half"], 2, "cannot read an MDP from {t}/mdp-half/mdp.npz"),
    (["eval", "{t}/renamed.npz", "--mdp", TINY], 2, "it has no 'policy' array"),
    (["eval", "{t}/half.npz", "--mdp", TINY], 2, "cannot read {t}/half.npz"),
    (["eval", "{t}/wrong.npy", "--mdp", TINY], 2, "policy"),
    (["eval", "{t}/res", "--gamma", "0.5"], 2, "--gamma needs --mdp: without it the MDP is "
                                                "{t}/res/mdp.npz"),
    (["solve", "--mdp-file", "{t}/res/mdp.npz", "--gamma", "0.5"], 2,
     "--mdp-file {t}/res/mdp.npz is the whole MDP: --gamma cannot be used with it"),
    (["run", "--mdp-file", "{t}/res/mdp.npz", "--seed", "3", "--out", "{t}/o"], 2,
     "--seed cannot be used with it"),
    (["run", "--mdp-file", "{t}/res/mdp.npz", "--mdp", TINY, "--out", "{t}/o"], 2,
     "--mdp cannot be used with it"),
    (["run", "--mdp", TINY, "--threads", "20000", "--out", "{t}/o"], 2, "n_threads must be <= "),
    (["run", "--mdp", TINY, "--out", "{t}/res"], 2, "already holds run"),
    (["run", "--mdp", TINY, "--out", "{t}/half.npz"], 2, "{t}/half.npz exists and is not a directory"),
    (["compare", "--mdp", TINY, "--out", "{t}/half.npz"], 2,
     "--out {t}/half.npz exists and is not a directory"),
    (["run", "--mdp", TINY, "--iters", "-5", "--out", "{t}/o"], 2, "iters must be >= 0, got -5"),
    (["sweep", "{t}/empty.npz", "--workers", "-2"], 2, "--workers must be >= 1, got -2"),
    (["sweep", "{t}/empty.npz", "--workers", "0"], 2, "--workers must be >= 1, got 0"),
    (["run", "--mdp", TINY, "--lr", "1e6", "--out", "{t}/numerical"], 1, "FloatingPointError: "),
]


def test_hostile_command_lines_are_one_error_line(tmp_path):
    """Every reproduction of the list: status 2 (input) or 1 (numerical), one line, no
    traceback, and no run directory left behind by an input error."""
    _bad_npz_files(tmp_path)
    t = str(tmp_path)
    for args, status, part in HOSTILE:
        args = [a.replace("{t}", t) for a in args]
        message = one_error_line(*run_cli(*args), expected_status=status)
        assert part.replace("{t}", t) in message, (args, message)
        if status == 2:
            assert not os.path.exists(os.path.join(t, "o")), args


def test_compare_checks_its_output_before_the_runs(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")

    def never(*a, **k):
        raise AssertionError("a run started before --out was checked")

    monkeypatch.setattr(fastppo, "solve", never)
    assert one_error_line(*run_cli("compare", "--mdp", TINY, "--out", str(tmp_path / "file"))) == (
        f"--out {tmp_path / 'file'} exists and is not a directory")


@pytest.mark.parametrize("config, message", [
    ({"workers": 0, "grid": {"tau": [0.1]}}, "sweep setting 'workers' must be an integer >= 1, got 0"),
    ({"workers": -1, "grid": {"tau": [0.1]}}, "sweep setting 'workers' must be an integer >= 1, got -1"),
    ({"workers": "two", "grid": {"tau": [0.1]}}, "sweep setting 'workers' must be an integer >= 1, got 'two'"),
    ({"out": 5, "grid": {"tau": [0.1]}}, "sweep setting 'out' must be a string, got 5"),
    ({"fixed": [1], "grid": {"tau": [0.1]}}, r"sweep setting 'fixed' must be a table, got \[1\]"),
    ({"grid": 5}, "sweep setting 'grid' must be a table or a list of tables, got 5"),
    ({"grid": [5]}, r"sweep setting 'grid' must be a table or a list of tables, got \[5\]"),
    ({"grid": {"tau": ["a"]}}, "sweep parameter 'tau' must be a number, got 'a'"),
    ({"grid": {"iters": [1.5]}}, "sweep parameter 'iters' must be an integer, got 1.5"),
    ({"grid": {"clip": [[0.1, "x"]]}}, "sweep parameter 'clip' must be a number or a list of two numbers"),
    ({"fixed": {"seed": True}, "grid": {"tau": [0.1]}}, "sweep parameter 'seed' must be an integer, got True"),
    ({"grid": {"mdp": [__import__("datetime").date(1979, 5, 27)]}},
     r"sweep parameter 'mdp' must be a string, got datetime.date\(1979, 5, 27\)"),
])
def test_sweep_settings_of_the_wrong_type(config, message, tmp_path):
    with pytest.raises(UsageError, match=message):
        fastppo.sweep(config, out=str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_sweep_workers_argument(tmp_path):
    for n in (0, -2, 1.5, True):
        with pytest.raises(UsageError, match=f"n_workers must be an integer >= 1, got {n!r}"):
            fastppo.sweep({"grid": {"tau": [0.1]}}, out=str(tmp_path), n_workers=n)


def test_sweep_run_ids_follow_the_mdp_file(tmp_path):
    p = {**runs.PARAMS, "mdp_file": str(tmp_path / "m.npz")}
    fastppo.garnet(10, 2, 2, seed=0).save(p["mdp_file"])
    a = sweeps.run_id(p, sweeps._file_digest(p["mdp_file"], {}))
    fastppo.garnet(10, 2, 2, seed=1).save(p["mdp_file"])
    b = sweeps.run_id(p, sweeps._file_digest(p["mdp_file"], {}))
    assert a != b and sweeps.run_id(p) not in (a, b)
    assert sweeps.run_id({**runs.PARAMS, "tau": 0.2}) == sweeps.run_id({**runs.PARAMS, "tau": 0.2}, None)


def test_a_sweep_run_directory_follows_the_run_rules(tmp_path):
    folder = tmp_path / "runs" / "abc"
    p = {**runs.PARAMS, "mdp": TINY, "iters": 2}
    folder.mkdir(parents=True)
    write_lock(folder)  # held by a live run (this process)
    row = sweeps._run_one(p, str(folder))
    assert row["status"] == "failed" and row["error"].startswith(
        f"UsageError: {folder} is in use by run ") and "which is still running" in row["error"]
    os.remove(folder / _io.LOCK)
    (folder / "checkpoint.npz").write_bytes(b"an unfinished earlier attempt")
    row = sweeps._run_one(p, str(folder))
    assert row["status"] == "ok" and row["iterations"] == 2
    assert json.loads((folder / _io.ROW).read_text()) == row
    assert checkpoint_run_id(folder) == identity(folder)["run_id"]


@pytest.mark.slow
def test_a_sweep_reruns_after_its_mdp_file_changed(tmp_path):
    pytest.importorskip("dask.distributed")
    mdp_file = tmp_path / "m.npz"
    fastppo.garnet(20, 3, 3, seed=0).save(mdp_file)
    (tmp_path / "s.toml").write_text(textwrap.dedent(f"""
        out = "out"
        workers = 1
        [fixed]
        iters = 3
        mdp_file = "{mdp_file}"
        [grid]
        tau = [0.2]
    """))
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        def sweep():
            return fastppo.sweep(str(tmp_path / "s.toml"), scheduler=cluster.scheduler_address)

        first = sweep()
        assert (first.n_run, first.n_failed) == (1, 0)
        again = sweep()
        assert (again.n_run, again.n_skipped) == (0, 1)
        fastppo.garnet(20, 3, 3, seed=1).save(mdp_file)
        changed = sweep()
        assert (changed.n_run, changed.n_skipped, changed.n_failed) == (1, 0, 0)
        assert changed.rows[0]["run"] != first.rows[0]["run"]
        J = fastppo.PPOClip(fastppo.garnet(20, 3, 3, seed=1), fastppo.ForwardKL(0.2)).run(3).J
        assert changed.rows[0]["J"] == J != first.rows[0]["J"]
        # a damaged row.json is run again, not a traceback; a damaged history is left out
        # of the plot, with a warning
        done = tmp_path / "out" / "runs" / changed.rows[0]["run"]
        for content in ("{", '{"status": "ok"}'):
            (done / _io.ROW).write_text(content)
            assert sweep().n_run == 1
        (done / _io.HISTORY).write_text("")
        with pytest.warns(UserWarning, match=f"cannot read {done / _io.HISTORY}: empty file; "
                                             f"run {changed.rows[0]['run']} is left out of the plot"):
            res = sweep()
        assert res.n_skipped == 1 and res.plots == []


@pytest.mark.slow
def test_hostile_command_lines_from_the_real_entry_point(tmp_path):
    """A few of the list through `python -m fastppo`: one line, no traceback."""
    _bad_npz_files(tmp_path)
    t = str(tmp_path)
    for args, status, part in [HOSTILE[0], HOSTILE[5], HOSTILE[12], HOSTILE[15], HOSTILE[21]]:
        args = [a.replace("{t}", t) for a in args]
        r = subprocess.run([sys.executable, "-m", "fastppo", *args], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == status and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.splitlines()) == 1 and part.replace("{t}", t) in r.stderr
    r = subprocess.run([sys.executable, "-m", "fastppo", "info"], capture_output=True, text=True,
                       env={**os.environ, "FASTPPO_NUM_THREADS": "20000"}, timeout=300)
    assert r.returncode == 2 and r.stderr.startswith(
        "fastppo: error: environment variable FASTPPO_NUM_THREADS='20000': must be <= ")
