"""Checkpoints (fastppo._run): the schema, bit-exact resume of every method (SampledPPO's
RNG included), damaged and hostile files through the API and ``fastppo run --resume``
(issue 13, item 1), fastppo 0.1.0 checkpoints, and a fuzz of the loader."""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import fastppo
from fastppo import _io, _run
from fastppo._errors import UsageError
from fastppo.cli import main

SMALL = "garnet:S=200,A=4,b=3,seed=0"
DATA = os.path.join(os.path.dirname(__file__), "data", "checkpoint-0.1.0")


def entries(folder):
    with np.load(os.path.join(folder, _io.CHECKPOINT), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def rewrite(folder, **changes):
    """Rewrite ``folder/checkpoint.npz`` with entries changed (None deletes one)."""
    e = entries(folder)
    for k, v in changes.items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    with open(os.path.join(folder, _io.CHECKPOINT), "wb") as f:
        np.savez(f, **e)


def settings_with(folder, **changes):
    return np.array(json.dumps({**json.loads(str(entries(folder)["settings"])), **changes}))


def run_cli(*args):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(list(args))
    return status, err.getvalue()


# ------------------------------------------------------------------ schema and resume
def test_checkpoint_schema(tmp_path):
    mdp = fastppo.garnet(40, 3, 3, seed=1)
    ref = fastppo.softmax(mdp, np.random.default_rng(0).normal(size=mdp.n_pairs))
    ppo = fastppo.KLPenaltyPPO(mdp, fastppo.AlphaDivergence(0.1, 0.5, ref=ref), reference=True)
    ppo.run(3)
    ppo.save(tmp_path)
    e = entries(tmp_path)
    assert str(e["format"]) == "fastppo-checkpoint-2" and str(e["method"]) == "KLPenaltyPPO"
    # the warm starts: the last solutions and, after them, the steps between the solutions
    # of consecutive iterations (from which the next start is predicted)
    # (and the policy's steps behind d's, which the visitation's start is fitted on)
    assert set(e) == {"format", "method", "mdp_digest", "regularizer", "ref", "settings",
                      "n_iter", "history", "reference", "logits", "pi", "table", "mu",
                      "v_warm", "d_warm", "v_step1", "v_step2", "d_step1", "d_step2",
                      "pi_design", "d_design1", "d_design2"}
    assert json.loads(str(e["regularizer"])) == {"name": "alpha", "tau": 0.1, "alpha": 0.5}
    assert json.loads(str(e["settings"])) == {
        "kl_target": 0.01, "beta": ppo.beta, "inner_steps": 10, "lr": ppo.lr, "lin_tol": 1e-12,
        "warm_start": True, "backend": ppo.backend, "n_threads": 1}
    assert int(e["n_iter"]) == 3 and e["history"].dtype == np.dtype(fastppo.solvers._HISTORY)
    assert np.array_equal(e["ref"], ref) and e["logits"].shape == (mdp.n_pairs,)
    for k in ("v_warm", "d_warm", "mu", "v_step1", "v_step2", "d_step1", "d_step2"):
        assert e[k].shape == (mdp.n_states,) and e[k].dtype == np.float64
    # π of d_warm's policy (the one before the last update) at every pair (120 ≤ DESIGN_PAIRS)
    assert e["pi_design"].shape == (mdp.n_pairs,) and not np.array_equal(e["pi_design"], ppo.pi)
    np.testing.assert_allclose(e["pi_design"].reshape(40, 3).sum(axis=1), 1.0, rtol=0, atol=1e-12)
    for k in ("d_design1", "d_design2"):
        assert e[k].shape == (fastppo.solvers.SKETCH_ROWS,) and e[k].dtype == np.float64
    # no entry is an object array: the file loads without pickle
    assert all(v.dtype != object for v in e.values())


def test_sampled_ppo_resume_is_bit_exact(tmp_path):
    mdp = fastppo.garnet(30, 4, 3, seed=0)
    reg = fastppo.ReverseKL(0.3, ref=fastppo.softmax(mdp, np.random.default_rng(2).normal(size=120)))
    kw = dict(seed=4, n_envs=64, dual_clip=3.0, value_clip=0.5, kl_target_step=0.01, clip=(0.1, 0.3))
    for backend in ("numba", "cython"):
        full = fastppo.SampledPPO(mdp, reg, backend=backend, **kw).run(8)
        first = fastppo.SampledPPO(mdp, reg, backend=backend, **kw).run(4)
        first.save(tmp_path / backend)
        resumed = fastppo.SampledPPO.resume(tmp_path / backend)
        assert resumed.n_iter == 4 and resumed.config == fastppo.SampledPPO(
            mdp, reg, backend=backend, **kw).config
        rest = resumed.run(4)
        assert np.array_equal(rest.logits, full.logits) and np.array_equal(rest.v, full.v)
        for name in rest.history.dtype.names:
            if name != "seconds":
                assert np.array_equal(rest.history[name], full.history[name], equal_nan=True), name
        assert rest.J == full.J and rest.kl_coef == full.kl_coef
        # the config is saved verbatim with the results
        config = json.loads((tmp_path / backend / "config.json").read_text())["method"]
        assert config == {"method": "SampledPPO", "regularizer": {"name": "reverse-kl", "tau": 0.3,
                                                                  "alpha": 0.0},
                          **resumed.config.to_dict()}
        assert config["seed"] == 4 and config["clip"] == [0.1, 0.3] and config["horizon"] == 459


def test_sampled_ppo_resume_with_a_generator_and_grpo(tmp_path):
    mdp = fastppo.garnet(20, 3, 3, seed=5)
    kw = dict(n_envs=32, advantage="grpo", epochs=2)
    full = fastppo.SampledPPO(mdp, seed=np.random.default_rng(9), **kw).run(6)
    ppo = fastppo.SampledPPO(mdp, seed=np.random.default_rng(9), **kw)
    ppo.run(2)
    ppo.save(tmp_path)
    assert json.loads(str(entries(tmp_path)["settings"]))["seed"] is None  # the state is saved
    rest = fastppo.SampledPPO.resume(tmp_path).run(4)
    assert np.array_equal(rest.logits, full.logits)


def test_sampled_ppo_config():
    mdp = fastppo.garnet(20, 3, 3, seed=5)
    config = fastppo.SampledPPOConfig(lr=0.2, n_envs=64, advantage="rloo")
    assert config.group_size == 8  # resolved once, on construction
    a = fastppo.SampledPPO(mdp, None, config, seed=1)
    b = fastppo.SampledPPO(mdp, lr=0.2, n_envs=64, advantage="rloo", seed=1)
    assert a.config == b.config and a.config.seed == 1 and a.config.kl_coef == 0.0
    assert a.config.horizon == int(np.ceil(np.log(0.01) / np.log(mdp.gamma)))
    assert np.array_equal(a.run(3).logits, b.run(3).logits)
    with pytest.raises(ValueError, match="epochs must be <= 10000"):
        fastppo.SampledPPOConfig(epochs=10**12)
    with pytest.raises(TypeError, match="whiten must be True or False"):
        fastppo.SampledPPOConfig(whiten="yes")
    with pytest.raises(TypeError, match="config must be a SampledPPOConfig"):
        fastppo.SampledPPO(mdp, None, {"lr": 0.1})
    with pytest.raises(TypeError, match="unexpected keyword argument 'step'"):
        fastppo.SampledPPO(mdp, step=0.1)


def test_damaged_sampled_ppo_checkpoint(tmp_path):
    mdp = fastppo.garnet(20, 3, 3, seed=5)
    ppo = fastppo.SampledPPO(mdp, fastppo.ReverseKL(0.2), n_envs=32, seed=1, kl_target_step=0.01)
    ppo.run(2)
    ppo.save(tmp_path)
    e = entries(tmp_path)
    rng = json.loads(str(e["rng"]))
    for changes, message in [
            ({"settings": settings_with(tmp_path, epochs=10**12)}, "epochs must be <= 10000"),
            ({"settings": settings_with(tmp_path, advantage="ppo")}, "advantage must be one of"),
            ({"settings": settings_with(tmp_path, gae_lambda=2.0)}, r"gae_lambda must be in \[0, 1\]"),
            ({"settings": settings_with(tmp_path, step=0.1)}, "unknown setting 'step' for SampledPPO"),
            ({"rng": np.array(json.dumps({**rng, "bit_generator": "Evil"}))},
             "rng must be the state of one of numpy's bit generators"),
            ({"rng": np.array(json.dumps({**rng, "state": {"state": "x", "inc": 1}}))},
             "rng: not a valid PCG64 state"),
            ({"kl_coef": np.array(-1.0)}, "kl_coef must be >= 0"),
            ({"values": np.zeros(3)}, r"values must have shape \(20,\) \(n_states\)"),
            ({"v_warm": np.zeros(20)}, "v_warm: unknown field"),
            ({"values": None}, "values: missing field")]:
        shutil.rmtree(tmp_path)
        ppo.save(tmp_path)
        rewrite(tmp_path, **changes)
        with pytest.raises(UsageError, match=message):
            fastppo.SampledPPO.resume(tmp_path)
    # a fixed kl_coef must agree with the settings
    fixed = fastppo.SampledPPO(mdp, fastppo.ReverseKL(0.2), n_envs=32, seed=1)
    fixed.run(1)
    shutil.rmtree(tmp_path)
    fixed.save(tmp_path)
    rewrite(tmp_path, kl_coef=np.array(0.7))
    with pytest.raises(UsageError, match="kl_coef: 0.7 differs from the fixed kl_coef 0.2"):
        fastppo.SampledPPO.resume(tmp_path)


# ----------------------------------------------------------------- fastppo 0.1.0 files
@pytest.mark.parametrize("method", ["PPOClip", "KLPenaltyPPO", "NPG"])
def test_checkpoints_of_0_1_0_are_migrated(method, tmp_path):
    """Untagged checkpoints written by fastppo 0.1.0 (tests/data, 6 iterations on a
    30-state garnet with a given π_ref) resume through the new checks: the stored state is
    restored exactly, and the continued run agrees with 0.1.0's own continuation to the
    accuracy of the linear solves (not bit for bit: the divergence kernels have computed
    their terms in more accurate forms since 0.1.0, which moves the last bits)."""
    shutil.copytree(os.path.join(DATA, method), tmp_path / "d")
    with np.load(os.path.join(DATA, method, "checkpoint.npz")) as f:
        stored = f["logits"]
    solver = getattr(fastppo, method).resume(tmp_path / "d")
    assert solver.n_iter == 6 and solver.reg.ref is not None and solver.lin_tol == 1e-12
    assert np.array_equal(solver.logits, stored.reshape(-1))
    assert (solver.history["n_passes"] == -1).all()  # not recorded by 0.1.0
    expected = np.load(os.path.join(DATA, method, "expected_logits.npy"))
    # solve errors are absolute on the scale of the logits, not relative to each (a logit
    # near 0 moves by ~5e-13 with any other warm start, warm_start=False included; and the
    # "auto" chain now finishes slow systems with a sparse LU where 0.1.0 ran BiCGSTAB)
    np.testing.assert_allclose(solver.run(4).logits, expected, rtol=1e-11,
                               atol=1e-11 * np.abs(expected).max())
    # the migrated state goes through the same checks: a damaged old file is refused
    old = entries(tmp_path / "d")
    for changes, message in [
            ({"logits": old["logits"][:10]}, r"checkpoint.npz: logits must have shape \(90,\)"),
            ({"foo": np.zeros(2)}, "foo: unknown field in a fastppo 0.1.0 checkpoint"),
            ({"lr": np.array(-1.0)}, "lr must be > 0"),
            ({"n_iter": None}, "cannot be migrated .*n_iter")]:
        shutil.copy(os.path.join(DATA, method, "checkpoint.npz"), tmp_path / "d" / "checkpoint.npz")
        rewrite(tmp_path / "d", **changes)
        with pytest.raises(UsageError, match=message):
            getattr(fastppo, method).resume(tmp_path / "d")
    if method != "NPG":
        shutil.copy(os.path.join(DATA, method, "checkpoint.npz"), tmp_path / "d" / "checkpoint.npz")
        rewrite(tmp_path / "d", inner_steps=np.array(10**12))
        with pytest.raises(UsageError, match="inner_steps must be <= 10000, got 1000000000000"):
            getattr(fastppo, method).resume(tmp_path / "d")


def test_untagged_foreign_npz_is_refused(tmp_path):
    fastppo.PPOClip(fastppo.garnet(10, 2, 2, seed=0)).run(1).save(tmp_path)
    with open(tmp_path / "checkpoint.npz", "wb") as f:
        np.savez(f, weights=np.zeros(3))
    with pytest.raises(UsageError, match="not a fastppo checkpoint .no format tag, and not one "
                                         "of fastppo 0.1.0."):
        fastppo.PPOClip.resume(tmp_path)


# ------------------------------------------------------------- damaged files (issue 13)
@pytest.fixture(scope="module", params=["numba", "cython"])
def cli_run(request, tmp_path_factory):
    """A run directory of `fastppo run` (10 iterations on a 200-state garnet)."""
    folder = str(tmp_path_factory.mktemp(f"run-{request.param}") / "d")
    assert run_cli("run", "--mdp", SMALL, "--iters", "10", "--out", folder, "--quiet",
                   "--backend", request.param)[0] == 0
    return folder


def _bogus_regularizer(folder):
    return {"regularizer": np.array(json.dumps({"name": "bogus", "tau": 0.1, "alpha": 0.0}))}


DAMAGE = {  # name -> (changes(folder), the field named in the one-line error)
    "logits cut to 10 entries": (lambda d: {"logits": entries(d)["logits"][:10]},
                                 r"logits must have shape \(800,\) \(n_pairs\), got \(10,\)"),
    "ref without full support": (lambda d: {"ref": np.tile([0.5, 0.5, 0.0, 0.0], 200)},
                                 r"ref must have full support: pair \(s=0, a=2\) has probability 0"),
    "short ref": (lambda d: {"ref": np.full(10, 0.25)},
                  r"ref must have shape \(800,\) or \(200, 4\), got \(10,\)"),
    "inner_steps 10**12": (lambda d: {"settings": settings_with(d, inner_steps=10**12)},
                           "inner_steps must be <= 10000, got 1000000000000"),
    "regularizer bogus": (_bogus_regularizer, "regularizer: unknown regularizer 'bogus'; "
                                              "choose from reverse-kl, forward-kl"),
    "extra key": (lambda d: {"__class__": np.zeros(1)},
                  "__class__: unknown field .not in the checkpoint schema."),
    "unknown setting": (lambda d: {"settings": settings_with(d, mdp="garnet")},
                        "settings: unknown setting 'mdp' for PPOClip"),
    "missing pi": (lambda d: {"pi": None}, "pi: missing field"),
    "pi not a policy": (lambda d: {"pi": entries(d)["pi"] * 2},
                        r"pi must sum to 1 in every state: state 0 sums to"),
    "pi not softmax(logits)": (lambda d: {"pi": np.roll(entries(d)["pi"], 4)},
                               r"pi: does not match softmax\(logits\)"),
    "NaN logits": (lambda d: {"logits": np.where(np.arange(800) == 7, np.nan, entries(d)["logits"])},
                   r"logits must be finite: pair \(s=1, a=3\) has nan"),
    "string logits": (lambda d: {"logits": np.array(["a"] * 800)},
                      "logits must be an array of real numbers, got dtype <U1"),
    "history cut": (lambda d: {"history": entries(d)["history"][:4]},
                    r"history: must have n_iter = 10 rows, got shape \(4,\)"),
    "n_iter negative": (lambda d: {"n_iter": np.array(-3)}, "n_iter must be >= 0, got -3"),
    "v_warm short": (lambda d: {"v_warm": np.zeros(3)},
                     r"v_warm must have shape \(200,\) \(n_states\), got \(3,\)"),
    "pi_design short": (lambda d: {"pi_design": np.zeros(3)},
                        r"pi_design must have shape \(800,\) \(the sampled pairs\), got \(3,\)"),
    "d_design beyond the steps": (lambda d: {"d_design12": entries(d)["d_design1"]},
                                  "d_design12 without its d_step"),
    "d_design NaN": (lambda d: {"d_design1": np.full(512, np.nan)}, "d_design1 must be finite"),
    "lin_tol zero": (lambda d: {"settings": settings_with(d, lin_tol=0.0)}, "lin_tol must be > 0"),
    "warm_start string": (lambda d: {"settings": settings_with(d, warm_start="yes")},
                          "warm_start must be True or False, got 'yes'"),
    "threads": (lambda d: {"settings": settings_with(d, n_threads=-2)},
                "n_threads must be a positive integer, got -2"),
    "backend": (lambda d: {"settings": settings_with(d, backend="rust")},
                "backend must be one of 'numba', 'cython', 'numpy'; got 'rust'"),
    "reference NaN": (lambda d: {"reference": np.array(np.nan)}, "reference must be finite"),
    "mu zero": (lambda d: {"mu": np.r_[0.0, np.full(199, 1 / 199)]}, r"mu must have full support"),
    "settings not JSON": (lambda d: {"settings": np.array("{inner_steps: 5")}, "settings is not valid JSON: Expecting"),
    "method": (lambda d: {"method": np.array("NPG")}, "the state is of a NPG, not of a PPOClip"),
    "format": (lambda d: {"format": np.array("fastppo-checkpoint-9")},
               "format: unknown checkpoint format 'fastppo-checkpoint-9'"),
    "object array": (lambda d: {"history": np.array([None, 1], dtype=object)},
                     "cannot read .*checkpoint.npz: Object arrays cannot be loaded"),
    "run_id not an id": (lambda d: {"run_id": np.array("../../etc")},
                         "run_id: must be 32 hexadecimal digits, got '../../etc'"),
    "run_id not text": (lambda d: {"run_id": np.zeros(32)}, "run_id must be a string"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_checkpoint_is_one_error_line(cli_run, damage, tmp_path):
    change, message = DAMAGE[damage]
    folder = str(tmp_path / "d")
    shutil.copytree(cli_run, folder)
    rewrite(folder, **change(folder))
    ckpt = os.path.join(folder, "checkpoint.npz")
    with pytest.raises(UsageError, match=message) as info:
        fastppo.PPOClip.resume(folder)
    assert ckpt in str(info.value) or "the state is of" in str(info.value)
    status, err = run_cli("run", "--resume", folder, "--iters", "12")
    assert status == 2, err
    assert err.startswith("fastppo: error: ") and len(err.splitlines()) == 1, err
    assert ckpt in err or damage == "method"


def test_truncated_and_empty_files_are_one_error_line(cli_run, tmp_path):
    folder = tmp_path / "d"
    shutil.copytree(cli_run, folder)
    data = (folder / "checkpoint.npz").read_bytes()
    for content in (data[:len(data) // 2], b"", data[:100], b"PK\x03\x04" + bytes(50)):
        (folder / "checkpoint.npz").write_bytes(content)
        with pytest.raises(UsageError, match=f"cannot read {folder / 'checkpoint.npz'}: "):
            fastppo.PPOClip.resume(folder)
        status, err = run_cli("run", "--resume", str(folder), "--iters", "12")
        assert status == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    (folder / "checkpoint.npz").write_bytes(data)
    (folder / "mdp.npz").write_bytes(b"garbage")
    with pytest.raises(UsageError, match=f"cannot read an MDP from {folder / 'mdp.npz'}"):
        fastppo.PPOClip.resume(folder)
    os.remove(folder / "mdp.npz")
    status, err = run_cli("run", "--resume", str(folder), "--iters", "12")
    assert status == 2 and err == (f"fastppo: error: no such file: {folder / 'mdp.npz'} "
                                   f"(the MDP of the checkpoint)\n")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numba", "cython"])
def test_cut_logits_from_the_real_entry_point(tmp_path, backend):
    """The reproduction of issue 13 (a segmentation fault before): exit 2, one line."""
    folder = str(tmp_path / "d")
    r = subprocess.run([sys.executable, "-m", "fastppo", "run", "--mdp", SMALL, "--iters", "10",
                        "--out", folder, "--quiet", "--backend", backend], capture_output=True)
    assert r.returncode == 0, r.stderr
    rewrite(folder, logits=entries(folder)["logits"][:10])
    r = subprocess.run([sys.executable, "-m", "fastppo", "run", "--resume", folder, "--iters",
                        "12"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr == (
        f"fastppo: error: {os.path.join(folder, 'checkpoint.npz')}: logits must have shape "
        f"(800,) (n_pairs), got (10,)\n")


def test_a_valid_edit_is_accepted(cli_run, tmp_path):
    """The checks refuse only what is wrong: a smaller inner_steps is a valid setting."""
    folder = str(tmp_path / "d")
    shutil.copytree(cli_run, folder)
    rewrite(folder, settings=settings_with(folder, inner_steps=3))
    ppo = fastppo.PPOClip.resume(folder)
    assert ppo.inner_steps == 3 and ppo.n_iter == 10
    ppo.run(1)


# ------------------------------------------------------------------------------ fuzz
def _mutations():
    keys = st.sampled_from(["format", "method", "mdp_digest", "regularizer", "settings", "n_iter",
                            "history", "reference", "logits", "pi", "table", "mu", "v_warm",
                            "d_warm", "run_id", "extra"])
    values = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**70, 2**70),
        st.text(max_size=20), st.booleans(),
        st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=30),
        st.lists(st.integers(-5, 5), min_size=1, max_size=30))
    edit = st.one_of(
        st.tuples(st.just("delete"), keys, st.none()),
        st.tuples(st.just("truncate"), keys, st.integers(0, 900)),
        st.tuples(st.just("value"), keys, values),
        st.tuples(st.just("dtype"), keys, st.sampled_from(["float32", "int8", "bool", "complex128",
                                                           "U3", "uint64"])),
        st.tuples(st.just("reshape"), keys, st.none()),
        st.tuples(st.just("scale"), keys, st.floats(-1e300, 1e300)),
        st.tuples(st.just("json"), st.sampled_from(["settings", "regularizer"]),
                  st.dictionaries(st.sampled_from(["inner_steps", "lr", "clip", "lin_tol", "name",
                                                   "tau", "alpha", "backend", "n_threads",
                                                   "warm_start", "x"]),
                                  st.one_of(st.integers(-10, 10**15), st.floats(), st.text(max_size=5),
                                            st.none(), st.booleans()), max_size=4)))
    return st.lists(edit, min_size=1, max_size=3)


def _apply(e, edits):
    for op, key, arg in edits:
        x = e.get(key, np.zeros(3))
        if op == "delete":
            e.pop(key, None)
        elif op == "truncate":
            e[key] = np.atleast_1d(x)[:arg]
        elif op == "value":
            e[key] = np.array(arg)
        elif op == "dtype":
            with np.errstate(all="ignore"), contextlib.suppress(ValueError, TypeError):
                e[key] = np.asarray(x).astype(arg)
        elif op == "reshape":
            e[key] = np.asarray(x).reshape(1, -1)
        elif op == "scale" and np.asarray(x).dtype.kind == "f":
            with np.errstate(all="ignore"):
                e[key] = np.asarray(x) * arg
        elif op == "json":
            try:
                base = json.loads(str(e.get(key, np.array("{}"))))
            except ValueError:
                base = {}
            e[key] = np.array(json.dumps({**(base if isinstance(base, dict) else {}), **arg}))
    return e


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("fuzz") / "base")
    assert run_cli("run", "--mdp", "garnet:S=12,A=3,b=2,seed=0", "--iters", "3", "--out", folder,
                   "--quiet", "--backend", "cython", "--tol", "1e-30")[0] == 0
    return folder


@settings(max_examples=60, deadline=timedelta(seconds=10), derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(edits=_mutations(), cut=st.one_of(st.none(), st.none(), st.none(), st.integers(0, 4000)))
def test_fuzz_checkpoint_loader(fuzz_run, edits, cut):
    """Random damage to a checkpoint: resume either works or raises UsageError, and the
    command line exits 0 (a valid edit), 1 (a numerical failure) or 2 with one line —
    never a crash, never a traceback."""
    folder = fuzz_run + "-case"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(fuzz_run, folder)
    e = _apply(entries(folder), edits)
    path = os.path.join(folder, "checkpoint.npz")
    with open(path, "wb") as f:
        np.savez(f, **e)
    if cut is not None:
        data = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(data[:cut])
    try:
        solver = fastppo.PPOClip.resume(folder)
    except UsageError as exc:
        assert "\n" not in str(exc)
    else:
        with contextlib.suppress(FloatingPointError, fastppo.ConvergenceError):
            solver.run(1)
    status, err = run_cli("run", "--resume", folder, "--iters", "5")
    assert status in (0, 1, 2), err
    if status:
        assert err.startswith("fastppo: error: ") and len(err.splitlines()) == 1, err


def test_run_module_exports():
    assert _run.FORMAT == "fastppo-checkpoint-2" and fastppo.RunResult is _run.RunResult


def test_sizes_are_checked_before_decompressing(cli_run, tmp_path):
    """A small compressed checkpoint that would expand to far more than the MDP needs is
    refused from the sizes the archive declares, before anything is decompressed."""
    folder = tmp_path / "d"
    shutil.copytree(cli_run, folder)
    e = entries(folder)
    for name, big in (("logits", np.zeros(2_000_000)),
                      ("history", np.zeros(1_000_000, dtype=e["history"].dtype))):
        with open(folder / "checkpoint.npz", "wb") as f:
            np.savez_compressed(f, **{**e, name: big})
        assert os.path.getsize(folder / "checkpoint.npz") < 200_000
        with pytest.raises(UsageError, match=f"cannot read {folder / 'checkpoint.npz'}: {name}: "
                                             r"\d+ bytes uncompressed, more than the \d+ it can need"):
            fastppo.PPOClip.resume(folder)
    res = _io.read_npz(os.path.join(cli_run, "result.npz"))
    with open(tmp_path / "result.npz", "wb") as f:
        np.savez_compressed(f, **{**res, "policy": np.zeros(2_000_000)})
    status, err = run_cli("eval", str(tmp_path / "result.npz"), "--mdp", SMALL)
    assert status == 2 and "policy: 16000128 bytes uncompressed, more than the 10496" in err, err


def test_a_run_directory_of_0_1_0_resumes_from_the_command_line(tmp_path):
    """tests/data/run-0.1.0: `fastppo run --step 0.5 --iters 5` of fastppo 0.1.0 (numba,
    garnet S=40). `--resume` migrates its checkpoint and its old parameter name, quietly,
    and continues bit for bit."""
    folder = tmp_path / "run"
    shutil.copytree(os.path.join(os.path.dirname(__file__), "data", "run-0.1.0"), folder)
    status, err = run_cli("run", "--resume", str(folder), "--iters", "8", "--quiet")
    assert status == 0 and err == "", err
    mdp = fastppo.garnet(40, 3, 3, seed=0)
    full = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.1), step_scale=0.5, backend="numba").run(8)
    with np.load(folder / "result.npz") as f:
        assert int(f["n_iter"]) == 8
        # the 0.1.0 checkpoint has no steps of the warm starts (as in the test above)
        np.testing.assert_allclose(f["logits"], full.logits, rtol=1e-11,
                                   atol=1e-11 * np.abs(full.logits).max())
    config = json.loads((folder / "config.json").read_text())
    assert config["params"]["step_scale"] == 0.5 and "step" not in config["params"]
    assert str(entries(folder)["format"]) == "fastppo-checkpoint-2"  # saved in today's schema


def test_snapshots_share_the_read_only_warm_steps(tmp_path):
    """The state taken before every iteration shares the warm starts' steps (read-only:
    nothing changes them) and copies what the next step changes in place."""
    ppo = fastppo.PPOClip(fastppo.garnet(60, 3, 3, seed=2), fastppo.ForwardKL(0.1))
    ppo.run(5)
    state = ppo._entries()
    step = state["v_step1"]
    assert step is ppo._vs.steps[0] and not step.flags.writeable
    with pytest.raises(ValueError):
        step[0] = 1.0
    assert state["logits"] is not ppo.logits and state["v_warm"] is not ppo._v
    ppo.save(tmp_path)
    resumed = fastppo.PPOClip.resume(tmp_path)
    assert all(not dx.flags.writeable for dx in resumed._vs.steps + resumed._ds.steps)
