"""Command line end to end, result directories, checkpoints and resume, atomic writes, sweeps."""
import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import fastppo
from fastppo import _io
from fastppo import cli as fcli, sweeps
from fastppo.cli import main

SMALL = "garnet:S=200,A=4,b=3,seed=0"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def cli(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "fastppo", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=dict(os.environ))


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def reference_run(n_iter, mdp=SMALL, step_scale=1.0, backend=None):
    """The logits of an uninterrupted Python-API run with the CLI's defaults."""
    m = fcli.parse_mdp(mdp)
    return fastppo.PPOClip(m, fastppo.ForwardKL(0.1), step_scale=step_scale, backend=backend).run(n_iter).logits


@pytest.mark.slow
# ------------------------------------------------------------------------ run / files
def test_run_writes_result_directory(tmp_path):
    r = cli("run", "--mdp", SMALL, "--iters", "12", "--tol", "1e-12", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    folder = tmp_path / "fastppo-run"  # the default --out
    assert f"saved: fastppo-run{os.sep}" in r.stdout and "gap J*-J" in r.stdout
    assert sorted(os.listdir(folder)) == ["checkpoint.npz", "config.json", "convergence.png",
                                          "history.csv", "mdp.npz", "result.npz", "run.json"]
    mdp = fastppo.MDP.load(folder / "mdp.npz")
    assert mdp == fcli.parse_mdp(SMALL)
    with np.load(folder / "result.npz") as f:
        assert f["policy"].shape == f["logits"].shape == (200, 4) and f["v"].shape == (200,)
        assert int(f["n_iter"]) == 12 and not bool(f["converged"])
        assert np.array_equal(f["logits"], reference_run(12))
        np.testing.assert_allclose(f["policy"].sum(axis=1), 1.0, rtol=1e-14)
    with open(folder / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and list(rows[0]) == [name for name, _ in fastppo.solvers._HISTORY]
    assert [int(r["iter"]) for r in rows] == list(range(1, 13))
    gaps = [float(r["gap"]) for r in rows]
    assert all(a > b > 0 for a, b in zip(gaps, gaps[1:]))  # forward KL: monotone here
    config = json.loads((folder / "config.json").read_text())
    assert config["fastppo_version"] == fastppo.__version__
    assert config["argv"] == ["run", "--mdp", SMALL, "--iters", "12", "--tol", "1e-12"]
    assert config["params"]["mdp"] == SMALL and config["params"]["iters"] == 12
    assert config["method"]["method"] == "PPOClip" and config["method"]["inner_steps"] == 10
    assert_png(folder / "convergence.png")


@pytest.mark.slow
def test_run_json_output_and_quiet(tmp_path):
    r = cli("run", "--mdp", "garnet:S=60,A=3,b=3,seed=1", "--iters", "400", "--tau", "0.5",
            "--json", "--backend", "cython", "--out", "o", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["converged"] and out["gap"] <= 1e-8 and out["iterations"] < 400
    assert out["out"] == "o" and not out["interrupted"] and r.stderr == ""
    h = _io.read_history(tmp_path / "o" / "history.csv")
    assert len(h) == out["iterations"] and h["gap"][-1] <= 1e-8 < h["gap"][-2]
    r = cli("run", "--mdp", "garnet:S=60,A=3,b=3,seed=1", "--iters", "3", "--quiet",
            "--backend", "cython", "--out", "q", "--clip", "0.1", "0.3", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""
    assert json.loads((tmp_path / "q" / "config.json").read_text())["method"]["clip"] == [0.1, 0.3]


def test_progress_bar_on_a_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["run", "--mdp", SMALL, "--iters", "3", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "PPOClip" in err and "3/3" in err
    for field in ("J=", "gap=", "products="):
        assert field in err
    assert main(["run", "--resume", str(tmp_path), "--iters", "5"]) == 0
    assert "5/5" in capsys.readouterr().err  # the bar counts all iterations
    assert main(["run", "--mdp", SMALL, "--iters", "3", "--out", str(tmp_path), "--no-progress",
                 "--overwrite"]) == 0  # a new run over the old one
    assert capsys.readouterr().err == ""


def test_mdp_options(tmp_path):
    """--seed and --gamma override the spec; --mdp-file runs a saved MDP."""
    folder = str(tmp_path / "a")
    assert main(["run", "--mdp", "garnet:S=50,A=3,b=3,seed=0", "--seed", "5", "--gamma", "0.9",
                 "--iters", "2", "--out", folder, "--quiet"]) == 0
    mdp = fastppo.MDP.load(os.path.join(folder, "mdp.npz"))
    assert mdp == fastppo.garnet(50, 3, 3, gamma=0.9, seed=5)
    assert mdp != fastppo.garnet(50, 3, 3, gamma=0.9, seed=0)
    ragged = fastppo.MDP.from_sa_pairs([0, 0, 1], [0, 2, 1], np.array([[0.5, 0.5], [0, 1], [1, 0]]),
                                       [1.0, 0.0, 0.5], 0.9)
    ragged.save(tmp_path / "ragged.npz")
    folder = str(tmp_path / "b")
    assert main(["run", "--mdp-file", str(tmp_path / "ragged.npz"), "--iters", "3", "--out", folder,
                 "--quiet"]) == 0
    assert fastppo.MDP.load(os.path.join(folder, "mdp.npz")) == ragged
    with np.load(os.path.join(folder, "result.npz")) as f:
        assert f["policy"].shape == f["logits"].shape == (3,)  # a ragged MDP stays flat


@pytest.mark.slow
def test_solve_eval_info(tmp_path):
    r = cli("solve", "--mdp", "chain:n_states=6", "--reg", "none", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bellman_residual"] <= 1e-10
    r = cli("info")
    assert r.returncode == 0, r.stderr
    for name in ("fastppo", "numpy", "scipy", "numba", "cython", "matplotlib", "dask"):
        assert name in r.stdout
    assert "OpenMP" in r.stdout or "serial build" in r.stdout
    # eval: a result directory (its MDP and regularizer), and a .npy policy on a given MDP
    mdp = fcli.parse_mdp(SMALL)
    res = fastppo.PPOClip(mdp, fastppo.ReverseKL(0.2), backend="cython").run(5)
    res.save(tmp_path / "res", config={"params": {"reg": "reverse-kl", "tau": 0.2}})
    np.save(tmp_path / "pi.npy", res.policy)
    r = cli("eval", str(tmp_path / "res"), "--json", "--gap")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    J = fastppo.evaluate(mdp, res.policy, fastppo.ReverseKL(0.2)).J
    J_star = fastppo.solve(mdp, fastppo.ReverseKL(0.2)).J
    assert out["J"] == J and out["J_star"] == J_star and out["gap"] == J_star - J > 0
    r = cli("eval", str(tmp_path / "pi.npy"), "--mdp", SMALL, "--reg", "chi2", "--tau", "0.3",
            "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["J"] == fastppo.evaluate(mdp, res.policy, fastppo.ChiSquare(0.3)).J


@pytest.mark.slow
def test_compare(tmp_path):
    r = cli("compare", "--mdp", "garnet:S=40,A=3,b=3,seed=2", "--tau", "0.5", "--iters", "120",
            "--backend", "cython", "--json", "--out", "cmp", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["method"] for row in rows] == ["PPO-Clip", "softmax PG", "NPG", "KL-penalty PPO"]
    by_name = {row["method"]: row for row in rows}
    for name in ("PPO-Clip", "NPG", "KL-penalty PPO"):
        assert by_name[name]["converged"] and 0 < by_name[name]["gap"] <= 1e-8
        assert by_name[name]["iterations"] < 120
    # exact softmax PG is the slow one: still far from J* after the same budget
    assert not by_name["softmax PG"]["converged"] and by_name["softmax PG"]["gap"] > 1e-5
    folder = tmp_path / "cmp"
    assert_png(folder / "compare.png")
    with open(folder / "compare.csv", newline="") as f:
        assert [row["method"] for row in csv.DictReader(f)] == [row["method"] for row in rows]
    for name in ("PPOClip", "SoftmaxPG", "NPG", "KLPenaltyPPO"):
        assert len(_io.read_history(folder / f"history-{name}.csv")) == next(
            row["iterations"] for row in rows if fcli.METHODS[row["method"]] == name)


# ------------------------------------------------------------------------ errors
@pytest.mark.parametrize("args, message", [
    (["run", "--mdp", "bogus"], "unknown MDP 'bogus'; choose from garnet, gridworld, chain, "
                                "token_tree, frozenlake, frozenlake8x8, taxi, cliffwalking"),
    (["run", "--mdp", "garnet:S=x"], "bad MDP spec 'garnet:S=x': S='x' is not a number"),
    (["run", "--mdp", "garnet:S=10;A=2"], "bad MDP spec 'garnet:S=10;A=2': S='10;A=2' is not a number"),
    (["run", "--mdp", "garnet:S"], "bad MDP spec 'garnet:S': expected key=value, got 'S'"),
    (["solve", "--mdp", "garnet:S=20"], "bad MDP spec 'garnet:S=20': garnet() missing 2 required "
                                        "positional arguments: 'n_actions' and 'branching'"),
    (["run", "--mdp", "garnet:S=10,A=2,b=2", "--reg", "kl"],
     "unknown --reg 'kl'; choose from forward-kl, reverse-kl, chi2, hellinger, js, alpha:<a>, none"),
    (["run", "--mdp", "garnet:S=10,A=2,b=2", "--reg", "alpha:x"], "bad --reg 'alpha:x': expected alpha:<number>"),
    (["run", "--mdp", "garnet:S=10,A=2,b=2", "--reg", "alpha:1"],
     "alpha must not be 0 or 1 (the limits are ReverseKL at 0 and ForwardKL at 1)"),
    (["run", "--mdp", "garnet:S=10,A=2,b=2", "--tau", "-1"], "tau must be finite and >= 0, got -1.0"),
    (["run", "--mdp", "garnet:S=10,A=2,b=2", "--tau", "x"],
     "argument --tau: invalid float value: 'x' (see: fastppo run --help)"),
    (["run", "--mdp", "garnet:S=10,A=2,b=20"], "branching must be <= n_states = 10, got 20"),
    (["run", "--mdp", "chain", "--seed", "1"], "--seed: chain MDPs are not random (they take no seed)"),
    (["run", "--mdp", "garnet:S=10,A=2,b=2", "--clip", "0.1", "0.2", "0.3"],
     "--clip takes one or two values, got 3"),
    (["run", "--mdp", "garnet:S=10,A=2,b=2", "--checkpoint-every", "0"], "--checkpoint-every must be >= 1, got 0"),
    (["run", "--mdp", "garnet:S=10,A=2,b=2", "--iters", "-5"], "iters must be >= 0, got -5"),
    (["run", "--mdp", "garnet:S=10,A=2,b=2", "--inner-steps", "100000"], "inner_steps must be <= 10000, got 100000"),
    (["solve", "--mdp-file", "no/such/file.npz"], "no such file: no/such/file.npz"),
    (["eval", "no/such/result.npz"], "no such file: no/such/result.npz"),
    (["run", "--resume", "no/such/dir"],
     "--resume no/such/dir: no checkpoint there (a directory written by fastppo run --out)"),
    (["sweep", "no/such.toml"], "no such file: no/such.toml"),
    (["frobnicate"], "argument command: invalid choice: 'frobnicate' (choose from 'run', 'solve', "
                     "'eval', 'compare', 'sweep', 'info') (see: fastppo --help)"),
])
def test_user_errors_are_one_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.err == f"fastppo: error: {message}\n"
    assert os.listdir(tmp_path) == []  # nothing written


@pytest.mark.slow
def test_user_errors_from_the_real_entry_point(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    for args, message, status in [
            (["run", "--mdp", "garnet:S=10,A=2,b=2", "--reg", "kl"], "unknown --reg 'kl'", 2),
            (["solve", "--mdp-file", str(tmp_path / "bad.npz")],
             f"cannot read an MDP from {tmp_path / 'bad.npz'}: ", 2),
            (["run", "--mdp", "garnet:S=30,A=3,b=3,seed=0", "--lr", "1e6", "--iters", "50",
              "--reg", "reverse-kl", "--out", str(tmp_path / "o")],
             "FloatingPointError: PPOClip: the policy underflowed to 0 at iteration 1 (pair (s=0, a=0)", 1)]:
        r = cli(*args)
        assert r.returncode == status, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stderr.startswith("fastppo: error: ") and message in r.stderr


def test_resume_refuses_changed_parameters(tmp_path, capsys):
    assert main(["run", "--mdp", SMALL, "--iters", "2", "--out", str(tmp_path / "a"),
                 "--quiet"]) == 0
    assert main(["run", "--resume", str(tmp_path / "a"), "--tau", "0.5"]) == 2
    assert capsys.readouterr().err == ("fastppo: error: --resume continues the saved run in its "
                                       "directory: --tau cannot be changed (only --iters, --tol)\n")
    fastppo.PPOClip(fastppo.garnet(20, 2, 2, seed=0)).run(1).save(tmp_path / "api")
    assert main(["run", "--resume", str(tmp_path / "api")]) == 2
    assert capsys.readouterr().err == (f"fastppo: error: --resume {tmp_path / 'api'}: not a fastppo "
                                       f"run directory (its config.json has no run parameters)\n")
    os.remove(tmp_path / "a" / "checkpoint.npz")
    assert main(["run", "--resume", str(tmp_path / "a")]) == 2
    assert "no checkpoint there" in capsys.readouterr().err


# --------------------------------------------------------------- checkpoints / resume
@pytest.mark.parametrize("method, kwargs", [
    ("PPOClip", dict(clip=(0.1, 0.3), inner_steps=5)), ("SoftmaxPG", {}),
    ("NPG", {}), ("KLPenaltyPPO", dict(kl_target=0.005)),
])
def test_resume_is_bit_exact_python_api(tmp_path, method, kwargs):
    cls = getattr(fastppo, method)
    mdp = fastppo.garnet(150, 4, 3, seed=3)
    reg = fastppo.ForwardKL(0.1, ref=fastppo.softmax(mdp, np.random.default_rng(0).normal(size=600)))
    full = cls(mdp, reg, reference=True, **kwargs).run(20)
    first = cls(mdp, reg, reference=True, **kwargs).run(10)
    first.save(tmp_path)
    resumed = cls.resume(tmp_path)
    assert resumed.n_iter == 10 and resumed.reg.ref is not None
    rest = resumed.run(10)
    assert np.array_equal(rest.logits, full.logits) and np.array_equal(rest.policy, full.policy)
    for name in ("iter", "J", "gap", "kl", "grad_norm", "n_matvec", "n_passes"):
        assert np.array_equal(rest.history[name], full.history[name])
    assert rest.J == full.J and rest.gap == full.gap
    # the same through the other door: the MDP given instead of read from mdp.npz
    assert np.array_equal(cls.resume(tmp_path, mdp=mdp).run(10).logits, full.logits)
    # history.csv holds the exact values
    h = _io.read_history(tmp_path / "history.csv")
    for name in h.dtype.names:
        assert np.array_equal(h[name], first.history[name], equal_nan=True)


def test_resume_rejects_wrong_mdp_class_and_missing_checkpoint(tmp_path):
    mdp = fastppo.garnet(50, 3, 3, seed=0)
    ppo = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.1))
    ppo.run(2)
    ppo.save(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz", "mdp.npz"]
    with pytest.raises(ValueError, match="the MDP does not match the one of the checkpoint"):
        fastppo.PPOClip.resume(tmp_path, mdp=fastppo.garnet(50, 3, 3, seed=1))
    with pytest.raises(ValueError, match="the state is of a PPOClip, not of a NPG"):
        fastppo.NPG.resume(tmp_path)
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        fastppo.PPOClip.resume(tmp_path / "..")
    # saving again into the same directory does not rewrite the MDP file
    before = os.stat(tmp_path / "mdp.npz").st_mtime_ns
    ppo.run(1)
    ppo.save(tmp_path)
    assert os.stat(tmp_path / "mdp.npz").st_mtime_ns == before
    assert fastppo.PPOClip.resume(tmp_path).n_iter == 3


@pytest.mark.slow
def test_resume_is_bit_exact_cli(tmp_path):
    args = ["--mdp", SMALL, "--backend", "cython", "--no-progress"]
    assert main(["run", *args, "--iters", "10", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    r = cli("run", "--resume", str(tmp_path / "a"), "--iters", "20", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["iterations"] == 20
    with np.load(tmp_path / "a" / "result.npz") as f:
        assert np.array_equal(f["logits"], reference_run(20, backend="cython"))
    assert len(_io.read_history(tmp_path / "a" / "history.csv")) == 20
    assert json.loads((tmp_path / "a" / "config.json").read_text())["params"]["iters"] == 20


@pytest.mark.slow
def test_sigint_stops_saves_and_resumes_bit_exact(tmp_path):
    folder = tmp_path / "run"
    args = ["--mdp", "garnet:S=2000,A=4,b=5,seed=0", "--step-scale", "0.05", "--backend", "cython"]
    proc = subprocess.Popen([sys.executable, "-m", "fastppo", "run", *args, "--iters", "100000",
                             "--tol", "1e-30", "--out", str(folder), "--checkpoint-every", "1",
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ))
    deadline = time.monotonic() + 120
    while not (folder / "checkpoint.npz").exists():  # the first iteration is done
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    with np.load(folder / "result.npz") as f:
        k = int(f["n_iter"])
    assert 1 <= k < 100000
    assert err == (f"fastppo: interrupted at iteration {k}; saved to {folder} "
                   f"(continue with: fastppo run --resume {folder})\n")
    assert f"iterations: {k} (did not reach gap 1e-30)" in out
    assert fastppo.PPOClip.resume(folder).n_iter == k
    r = cli("run", "--resume", str(folder), "--iters", str(k + 3), "--quiet")
    assert r.returncode == 0, r.stderr
    with np.load(folder / "result.npz") as f:
        assert int(f["n_iter"]) == k + 3
        assert np.array_equal(f["logits"], reference_run(
            k + 3, "garnet:S=2000,A=4,b=5,seed=0", step_scale=0.05, backend="cython"))


SAVE_LOOP = textwrap.dedent("""
    import sys
    import fastppo
    mdp = fastppo.garnet(300, 4, 3, seed=0)
    ppo = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.1), reference=True, backend="cython")
    while True:
        ppo.run(1).save(sys.argv[1])
        print(ppo.n_iter, flush=True)
""")


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.037, 0.09, 0.16])
def test_kill_during_saves_leaves_complete_files(tmp_path, delay):
    """kill -9 at an arbitrary moment of a save loop: every file is a complete version."""
    folder = tmp_path / "res"
    proc = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(folder)], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ))
    for _ in range(3):  # three complete saves, then kill during the following ones
        assert proc.stdout.readline().strip()
    time.sleep(delay)
    proc.kill()
    proc.wait(timeout=60)
    proc.stdout.close()
    files = set(os.listdir(folder))
    assert {"result.npz", "history.csv", "config.json", "convergence.png", "checkpoint.npz",
            "mdp.npz"} <= files
    assert all(name.startswith(".") and name.endswith(".tmp") for name in files - {
        "result.npz", "history.csv", "config.json", "convergence.png", "checkpoint.npz", "mdp.npz"})
    mdp = fastppo.garnet(300, 4, 3, seed=0)
    with np.load(folder / "result.npz") as f:
        n = int(f["n_iter"])
        assert n >= 3 and f["logits"].shape == (300, 4) and f["v"].shape == (300,)
        assert np.array_equal(f["logits"], fastppo.PPOClip(
            mdp, fastppo.ForwardKL(0.1), backend="cython").run(n).logits)
    h = _io.read_history(folder / "history.csv")
    assert len(h) >= 3 and np.array_equal(h["iter"], np.arange(1, len(h) + 1))
    assert json.loads((folder / "config.json").read_text())["method"]["method"] == "PPOClip"
    assert_png(folder / "convergence.png")
    resumed = fastppo.PPOClip.resume(folder)
    assert resumed.n_iter >= 3 and len(resumed.history) == resumed.n_iter
    assert np.array_equal(resumed.logits, fastppo.PPOClip(
        mdp, fastppo.ForwardKL(0.1), backend="cython").run(resumed.n_iter).logits.reshape(-1))


# ------------------------------------------------------------------------ sweeps
SWEEP = textwrap.dedent("""
    out = "sweep"
    workers = 2

    [fixed]
    iters = 150
    backend = "cython"

    [[grid]]
    mdp = ["garnet:S=30,A=3,b=3", "token_tree:vocab=3,depth=3"]
    seed = [0, 1]
    tau = [0.2, 0.5]

    [[grid]]                   # one injected failure: branching > S
    mdp = ["garnet:S=10,A=2,b=20"]
    clip = [[0.1, 0.3]]
""")


@pytest.mark.slow
def test_sweep_on_local_cluster(tmp_path):
    pytest.importorskip("dask.distributed")
    config = tmp_path / "sweep.toml"
    config.write_text(SWEEP)
    res = fastppo.sweep(str(config), n_workers=2)  # a LocalCluster of 2 workers
    assert (res.n_run, res.n_skipped, res.n_failed) == (9, 0, 1)
    with open(res.csv, newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 9 and list(table[0]) == list(sweeps.COLUMNS)
    ok = [r for r in table if r["status"] == "ok"]
    failed = [r for r in table if r["status"] == "failed"]
    assert len(ok) == 8 and len(failed) == 1
    assert failed[0]["mdp"] == "garnet:S=10,A=2,b=20" and failed[0]["clip"] == "[0.1, 0.3]"
    assert failed[0]["error"] == "ValueError: branching must be <= n_states = 10, got 20"
    assert {(r["mdp"], r["seed"], r["tau"]) for r in ok} == {
        (m, s, t) for m in ("garnet:S=30,A=3,b=3", "token_tree:vocab=3,depth=3")
        for s in ("0", "1") for t in ("0.2", "0.5")}
    for r in ok:  # each row is its run: the saved result, and J* of its own MDP
        mdp = fcli.parse_mdp(r["mdp"], seed=int(r["seed"]))
        J_star = fastppo.solve(mdp, fastppo.ForwardKL(float(r["tau"])), backend="cython").J
        assert float(r["J_star"]) == J_star and float(r["gap"]) == J_star - float(r["J"])
        with np.load(tmp_path / "sweep" / "runs" / r["run"] / "result.npz") as f:
            assert int(f["n_iter"]) == int(r["iterations"]) <= 150
    assert sorted(os.path.basename(p) for p in res.plots) == [
        "plot-garnet_S=30_A=3_b=3.png", "plot-token_tree_vocab=3_depth=3.png"]
    for p in res.plots:
        assert_png(p)

    # rerun through the command line on an existing cluster: finished runs are skipped
    from dask.distributed import LocalCluster

    stamps = {r["run"]: os.stat(tmp_path / "sweep" / "runs" / r["run"] / "row.json").st_mtime_ns
              for r in ok}
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        r = cli("sweep", str(config), "--scheduler", cluster.scheduler_address, "--no-progress")
    assert r.returncode == 1, r.stderr  # a run failed
    assert r.stdout.startswith("9 runs: 8 done before (skipped), 1 run now, 1 failed\n")
    assert stamps == {k: os.stat(tmp_path / "sweep" / "runs" / k / "row.json").st_mtime_ns
                      for k in stamps}
    with open(res.csv, newline="") as f:
        assert [r["status"] for r in csv.DictReader(f)] == [r["status"] for r in table]


@pytest.mark.slow
def test_sweep_config_errors(tmp_path):
    with pytest.raises(fcli.UsageError, match="unknown sweep parameter 'eps'"):
        fastppo.sweep({"grid": {"eps": [0.1]}}, out=str(tmp_path))
    with pytest.raises(fcli.UsageError, match="grid parameter 'tau' must be a non-empty list"):
        fastppo.sweep({"grid": {"tau": 0.1}}, out=str(tmp_path))
    with pytest.raises(fcli.UsageError, match="the sweep has no \\[grid\\]"):
        fastppo.sweep({"fixed": {"tau": 0.1}}, out=str(tmp_path))
    (tmp_path / "bad.toml").write_text("[grid\n")
    r = cli("sweep", str(tmp_path / "bad.toml"))
    assert r.returncode == 2 and r.stderr.startswith(f"fastppo: error: {tmp_path / 'bad.toml'}: "
                                                     "not valid TOML")
    assert len(r.stderr.splitlines()) == 1


def test_sweep_runs_are_keyed_by_parameters():
    runs = sweeps.expand({"fixed": {"iters": 5}, "grid": [{"tau": [0.1, 0.2]},
                                                                  {"tau": [0.2, 0.3]}]})
    assert [r["tau"] for r in runs] == [0.1, 0.2, 0.3] and all(r["iters"] == 5 for r in runs)
    ids = [sweeps.run_id(r) for r in runs]
    assert len(set(ids)) == 3 and ids[0] == sweeps.run_id(dict(reversed(runs[0].items())))


# ------------------------------------------------------------------ the error rule
def test_error_classes(tmp_path, capsys, monkeypatch):
    """User input: one line, exit 2; a numerical failure: one line, exit 1; a bug deep in
    the library keeps its traceback (it is not a "user mistake")."""
    args = ["run", "--mdp", "garnet:S=10,A=2,b=2", "--iters", "2", "--out", str(tmp_path / "o")]

    def converge_fail(*a, **k):
        raise fastppo.ConvergenceError("evaluate did not reach tol=1e-12")

    monkeypatch.setattr(fastppo, "solve", converge_fail)
    assert main(args) == 1
    assert capsys.readouterr().err == ("fastppo: error: ConvergenceError: evaluate did not reach "
                                       "tol=1e-12\n")

    def bug(*a, **k):
        raise ValueError("an internal inconsistency")

    monkeypatch.setattr(fastppo, "solve", bug)
    with pytest.raises(ValueError, match="an internal inconsistency"):
        main(args)
    monkeypatch.undo()
    for name, value, message in [
            ("FASTPPO_NUM_THREADS", "abc", "environment variable FASTPPO_NUM_THREADS='abc': must "
                                           "be a positive integer"),
            ("FASTPPO_BACKEND", "rust", "environment variable FASTPPO_BACKEND='rust': backend must "
                                        "be one of 'numba', 'cython', 'numpy'; got 'rust'")]:
        monkeypatch.setenv(name, value)
        assert main(["info"]) == 2
        assert capsys.readouterr().err == f"fastppo: error: {message}\n"
        monkeypatch.delenv(name)
    assert main(["solve", "--mdp", "chain:n_states=5", "--threads", "0"]) == 2
    assert capsys.readouterr().err == "fastppo: error: n_threads must be a positive integer, got 0\n"
    assert main(["run", "--mdp", "garnet:S=10,A=2,b=2", "--inner-steps", "0"]) == 2
    assert capsys.readouterr().err == "fastppo: error: inner_steps must be >= 1, got 0\n"
    (tmp_path / "cfg").mkdir()
    fastppo.PPOClip(fastppo.garnet(10, 2, 2, seed=0)).run(1).save(tmp_path / "cfg")
    (tmp_path / "cfg" / "config.json").write_text("{not json")
    assert main(["run", "--resume", str(tmp_path / "cfg")]) == 2
    assert capsys.readouterr().err.startswith(
        f"fastppo: error: cannot read {tmp_path / 'cfg' / 'config.json'}: Expecting")


def test_old_step_flag_and_sweep_key_still_work(tmp_path, capsys):
    assert main(["run", "--mdp", SMALL, "--iters", "3", "--step", "0.5", "--out",
                 str(tmp_path / "a"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err == ("fastppo: warning: the run parameter 'step' is deprecated and will be removed "
                   "in fastppo 0.3.0; use 'step_scale'\n")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["params"]["step_scale"] == 0.5 and "step" not in config["params"]
    with np.load(tmp_path / "a" / "result.npz") as f:
        assert np.array_equal(f["logits"], reference_run(3, step_scale=0.5))
    assert main(["run", "--mdp", SMALL, "--step", "0.5", "--step-scale", "0.5"]) == 2
    assert "give --step-scale only" in capsys.readouterr().err
    with pytest.warns(DeprecationWarning, match="'step' is deprecated"):
        runs = sweeps.expand({"grid": {"step": [0.5, 0.25]}})
    assert [r["step_scale"] for r in runs] == [0.5, 0.25] and "step" not in runs[0]
