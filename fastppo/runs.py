"""The run language shared by the command line and sweeps: specs, parameters, one run.

A run is a dict of parameters (``PARAMS``: the options of ``fastppo run`` and the keys
of a sweep). ``execute(p, out)`` solves for J*, runs PPO-Clip and saves a result
directory. The spec language:

- an MDP spec ``name:key=value,...`` (``garnet:S=1000,A=4,b=5,seed=0``, ``chain:S=50``,
  ``gridworld:H=20,W=20``, ``token_tree:vocab=3,depth=4``, or a Gymnasium toy text
  environment ``frozenlake``, ``frozenlake8x8``, ``taxi``, ``cliffwalking``); aliases
  S, A, b, H, W; numbers with a ``.`` or ``e`` are floats;
- a regularizer name from the table of ``fastppo.regularizers`` (``forward-kl``,
  ``reverse-kl``, ``chi2``, ``hellinger``, ``js``, ``alpha:<a>``) or ``none``, with ``tau``.

Errors in the user's input are raised as :class:`fastppo._errors.UsageError` here,
where the input is read: spec parsing, file loading, and the constructors that
validate the user's values (``user_input``). Numerical failures of the run and bugs
pass through unchanged.

**A run directory belongs to one run.** ``execute`` first takes the directory's lock
(``fastppo._io.locked``: a second run into it is refused, naming the holder), then:

- a new run refuses a directory that already holds the results of a run
  (``checkpoint.npz``, ``result.npz``, ``history.csv`` or a sweep's ``row.json``) unless
  ``overwrite``; it then writes its identity ``run.json`` (a random run id and the
  SHA-256 of the parameters it cannot change on resume, ``FIXED_ON_RESUME``) before
  anything else, and only then deletes the files of the run it replaces;
- every checkpoint it writes carries the run id; ``resume`` continues only a
  checkpoint with the id of ``run.json`` and a ``config.json`` whose parameters have
  the digest of ``run.json``: a directory where a new run was started over an old one
  and stopped before its first checkpoint is refused, not silently continued. (A
  directory without ``run.json``, from an older fastppo, is adopted on resume.)
- a run that fails numerically at iteration k saves its k − 1 iterations first (the
  error says so); ``should_stop`` (Ctrl-C, SIGTERM) stops it after the current
  iteration, saved.
"""
import contextlib
import hashlib
import inspect
import json
import numbers
import os
import time
import uuid
import warnings

from . import _validation as V
from ._errors import UsageError
from ._krylov import ConvergenceError

__all__ = ["DEFAULT_MDP", "PARAMS", "REGS", "execute", "load_mdp", "parse_clip", "parse_mdp",
           "parse_reg", "normalize_params", "check_settings", "check_param_types", "user_input",
           "params_digest", "read_config", "saved_params"]

DEFAULT_MDP = "garnet:S=50000,A=10,b=10,seed=0"
DEFAULT_REG = "forward-kl"
# The parameters of one PPO-Clip run (the options of `fastppo run`, the keys of a sweep);
# mdp None: DEFAULT_MDP, unless mdp_file is given.
PARAMS = dict(mdp=None, mdp_file=None, gamma=None, seed=None, reg=DEFAULT_REG, tau=0.1,
              clip=0.2, inner_steps=10, lr=None, step_scale=1.0, iters=1000, tol=1e-8,
              backend=None, threads=None)
# old parameter names, accepted with a DeprecationWarning until 0.3.0
RENAMED = {"step": "step_scale"}
# what --resume cannot change (the rest: iters, tol)
FIXED_ON_RESUME = ("mdp", "mdp_file", "gamma", "seed", "reg", "tau", "clip", "inner_steps", "lr",
                   "step_scale", "backend", "threads")


def _reg_names():
    """The regularizer names of the table in ``fastppo.regularizers``, the default first."""
    from .regularizers import REGULARIZERS

    names = [n if n != "alpha" else "alpha:<a>" for n in REGULARIZERS]
    return [DEFAULT_REG, *(n for n in names if n != DEFAULT_REG), "none"]


REGS = ", ".join(_reg_names())


@contextlib.contextmanager
def user_input(prefix=""):
    """Turn a ValueError/TypeError raised while checking the user's values into a
    :class:`UsageError` (one line, exit status 2), with ``prefix`` before the message."""
    try:
        yield
    except UsageError:
        raise
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{prefix}{exc}") from exc


_REAL, _INT = "a number", "an integer"
# what each run parameter must be (None allowed where its default is None)
_TYPES = dict(mdp="a string", mdp_file="a string", gamma=_REAL, seed=_INT, reg="a string",
              tau=_REAL, clip="a number or a list of two numbers", inner_steps=_INT, lr=_REAL,
              step_scale=_REAL, iters=_INT, tol=_REAL, backend="a string", threads=_INT)


def _is(value, what):
    if what == _INT:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if what == _REAL:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if what == "a string":
        return isinstance(value, str)
    return _is(value, _REAL) or (isinstance(value, (list, tuple)) and 1 <= len(value) <= 2
                                 and all(_is(v, _REAL) for v in value))


def check_param_types(p, what="run parameter"):
    """UsageError naming the first parameter of ``p`` whose value has the wrong type
    (the ranges are checked where the values are used)."""
    for key, value in p.items():
        if key in _TYPES and not (value is None and PARAMS[key] is None) \
                and not _is(value, _TYPES[key]):
            raise UsageError(f"{what} {key!r} must be {_TYPES[key]}, got {value!r}")


def params_digest(p):
    """SHA-256 of the parameters a run cannot change on resume (``FIXED_ON_RESUME``)."""
    from ._io import _jsonable

    text = json.dumps({k: p.get(k) for k in FIXED_ON_RESUME}, sort_keys=True, default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()


def normalize_params(p, warn=True):
    """``p`` with old parameter names (``step``) renamed, with a DeprecationWarning per
    name (``warn=False``: silently, for parameters saved by an older fastppo)."""
    p = dict(p)
    for old, new in RENAMED.items():
        if old in p:
            value = p.pop(old)
            if warn:
                warnings.warn(f"the run parameter {old!r} is deprecated and will be removed in "
                              f"fastppo 0.3.0; use {new!r}", DeprecationWarning, stacklevel=2)
            if p.get(new) is None or p.get(new) == PARAMS[new]:
                p[new] = value
    return p


# ------------------------------------------------------------------- parsing specs
def parse_mdp(spec, gamma=None, seed=None):
    """An MDP from a spec like ``garnet:S=1000,A=4,b=5,seed=0`` or ``frozenlake8x8``.

    ``gamma`` and ``seed`` (when not None) override the spec's values.
    """
    import fastppo

    if not isinstance(spec, str):
        raise UsageError(f"an MDP spec must be a string, got {spec!r}")
    name, _, rest = spec.partition(":")
    kw = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"bad MDP spec {spec!r}: expected key=value, got {item!r}")
        try:
            kw[key.strip()] = float(value) if "." in value or "e" in value.lower() else int(value)
        except ValueError:
            raise UsageError(f"bad MDP spec {spec!r}: {key}={value!r} is not a number") from None
    if gamma is not None:
        kw["gamma"] = gamma
    aliases = {"S": "n_states", "A": "n_actions", "b": "branching", "H": "height", "W": "width"}
    kw = {aliases.get(k, k): v for k, v in kw.items()}
    builders = {"garnet": fastppo.garnet, "gridworld": fastppo.gridworld,
                "chain": fastppo.chain, "token_tree": fastppo.token_tree}
    gym = {"frozenlake": ("FrozenLake-v1", {"map_name": "4x4"}),
           "frozenlake8x8": ("FrozenLake-v1", {"map_name": "8x8"}),
           "taxi": ("Taxi-v4", {}), "cliffwalking": ("CliffWalking-v1", {})}
    if name not in builders and name not in gym:
        raise UsageError(f"unknown MDP {name!r}; choose from {', '.join([*builders, *gym])}")
    if seed is not None:
        if name not in builders or "seed" not in inspect.signature(builders[name]).parameters:
            raise UsageError(f"--seed: {name} MDPs are not random (they take no seed)")
        kw["seed"] = seed
    if name in builders:
        try:
            return builders[name](**kw)
        except TypeError as exc:  # a missing or unknown key, a value of the wrong type
            raise UsageError(f"bad MDP spec {spec!r}: {exc}") from exc
        except ValueError as exc:  # a value out of range: the builder's message names it
            raise UsageError(str(exc)) from exc
    try:
        import gymnasium
    except ImportError:
        raise UsageError(f"--mdp {name} needs gymnasium: pip install gymnasium") from None
    env_id, env_kw = gym[name]
    unknown = sorted(set(kw) - {"gamma"})
    if unknown:
        raise UsageError(f"bad MDP spec {spec!r}: {name} takes only gamma, got {unknown[0]}")
    with user_input(f"bad MDP spec {spec!r}: "):
        return fastppo.MDP.from_gymnasium(gymnasium.make(env_id, **env_kw), kw.get("gamma", 0.99))


def parse_reg(name, tau):
    """A regularizer from ``--reg`` and ``--tau`` (None for ``none``), by the table of
    ``fastppo.regularizers``."""
    from .regularizers import REGULARIZERS, AlphaDivergence

    if name == "none":
        return None
    if not isinstance(name, str):
        raise UsageError(f"--reg must be a name, got {name!r}")
    key, colon, alpha = name.partition(":")
    cls = REGULARIZERS.get(key)
    if cls is None or (cls is AlphaDivergence) != bool(colon):
        raise UsageError(f"unknown --reg {name!r}; choose from {REGS}")
    with user_input():
        if cls is AlphaDivergence:
            try:
                alpha = float(alpha)
            except ValueError:
                raise UsageError(f"bad --reg {name!r}: expected alpha:<number>") from None
            return cls(tau, alpha)
        return cls(tau)


def load_mdp(p, fallback=None):
    """The MDP of parameters ``p``: ``mdp_file``, else the ``mdp`` spec, else ``fallback``
    (a path to an ``.npz``), else the default spec. A file is the whole MDP: ``mdp``,
    ``gamma`` or ``seed`` with ``mdp_file`` (or ``gamma``, ``seed`` with the fallback) is
    an error, not silently ignored."""
    import fastppo
    from ._io import READ_ERRORS, one_line

    path = p.get("mdp_file") or (fallback if p.get("mdp") is None else None)
    if path:
        extra = [k for k in ("mdp", "gamma", "seed") if p.get(k) is not None]
        if extra:
            flag = f"--{extra[0]}"
            raise UsageError(f"--mdp-file {path} is the whole MDP: {flag} cannot be used with it"
                             if p.get("mdp_file") else
                             f"{flag} needs --mdp: without it the MDP is {path}")
        if not os.path.exists(path):
            raise UsageError(f"no such file: {path}")
        try:
            return fastppo.MDP.load(path)
        except READ_ERRORS as exc:
            raise UsageError(f"cannot read an MDP from {path}: {one_line(exc)}") from None
    return parse_mdp(p.get("mdp") or DEFAULT_MDP, p.get("gamma"), p.get("seed"))


def parse_clip(clip):
    """``--clip`` / the ``clip`` parameter: ε, or (ε_low, ε_high)."""
    clip = list(clip) if isinstance(clip, (list, tuple)) else [clip]
    if len(clip) not in (1, 2):
        raise UsageError(f"--clip takes one or two values, got {len(clip)}")
    return clip[0] if len(clip) == 1 else tuple(clip)


def check_settings(p):
    """The PPOClip keywords of run parameters ``p``, checked before anything is computed
    (with the checks of the constructor); UsageError naming the parameter."""
    from ._backend import resolve_backend, resolve_threads
    from .solvers import MAX_INNER_STEPS, _clip_range

    clip = parse_clip(p["clip"])
    with user_input():
        _clip_range(clip)
        V.check_int(p["inner_steps"], "inner_steps", maximum=MAX_INNER_STEPS)
        V.check_positive(p["lr"], "lr", allow_none=True)
        V.check_positive(p["step_scale"], "step_scale")
        resolve_backend(p["backend"])
        resolve_threads(p["threads"])
    return dict(clip=clip, inner_steps=p["inner_steps"], lr=p["lr"], step_scale=p["step_scale"],
                backend=p["backend"], n_threads=p["threads"])


# ---------------------------------------------------------------- one PPO-Clip run
def read_config(folder):
    """The ``config.json`` of run directory ``folder`` as a dict ({} when it has none);
    UsageError naming the file if it cannot be read."""
    from . import _io

    path = os.path.join(folder, _io.CONFIG)
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {_io.one_line(exc)}") from None
    if not isinstance(saved, dict):
        raise UsageError(f"{path}: must hold a JSON object, got {type(saved).__name__}")
    params = saved.get("params")
    if params is not None and not isinstance(params, dict):
        raise UsageError(f"{path}: params must be an object, got {type(params).__name__}")
    return saved


def saved_params(folder):
    """The run parameters of the run saved in ``folder`` (for ``--resume``), checked:
    UsageError if there is nothing to resume there."""
    from . import _io

    lock = os.path.join(folder, _io.LOCK)
    if os.path.lexists(lock):  # a run is going on there (or was killed): say so first
        raise UsageError(_io.lock_message(folder, lock))
    ckpt = os.path.join(folder, _io.CHECKPOINT)
    files = _io.run_files(folder) if os.path.isdir(folder) else []
    if _io.RUN in files and not set(files) & set(_io.RESULT_FILES):
        raise UsageError(f"--resume {folder}: no checkpoint there: its run stopped before its "
                         f"first checkpoint (start it again with --overwrite)")
    if not os.path.exists(ckpt) or not os.path.exists(os.path.join(folder, _io.CONFIG)):
        raise UsageError(f"--resume {folder}: no checkpoint there (a directory written "
                         f"by fastppo run --out)")
    params = read_config(folder).get("params")
    if params is None:
        raise UsageError(f"--resume {folder}: not a fastppo run directory (its "
                         f"config.json has no run parameters)")
    params = normalize_params(params, warn=False)
    check_param_types(params, f"{os.path.join(folder, _io.CONFIG)}: run parameter")
    return params


def _read_identity(folder):
    """``run.json`` of ``folder`` (None when absent), checked."""
    from . import _io
    from ._run import RUN_ID

    path = os.path.join(folder, _io.RUN)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            ident = json.load(f)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {_io.one_line(exc)}") from None
    if not (isinstance(ident, dict) and isinstance(ident.get("run_id"), str)
            and RUN_ID.fullmatch(ident["run_id"]) and isinstance(ident.get("params_sha256"), str)):
        raise UsageError(f"{path}: not a fastppo run identity (no run_id of 32 hex digits, "
                         f"or no params_sha256)")
    return ident


def _write_identity(folder, run_id, p):
    import fastppo
    from . import _io

    _io.write_json(os.path.join(folder, _io.RUN), {
        "run_id": run_id, "params_sha256": params_digest(p),
        "params": {k: p.get(k) for k in FIXED_ON_RESUME},
        "created": time.strftime("%Y-%m-%d %H:%M:%S"), "fastppo_version": fastppo.__version__})


def _claim(out, p, run_id, overwrite):
    """Make ``out`` (locked) the directory of the new run ``run_id``: refuse one holding
    the results of another run (a checkpoint, a result, a history) unless ``overwrite``;
    identity first, then the old files go. (A run that saved nothing, e.g. one that
    failed before its first iteration, is replaced without asking.)"""
    from . import _io

    held = [name for name in _io.run_files(out) if name in _io.RESULT_FILES]
    if held and not overwrite:
        ident = None
        with contextlib.suppress(UsageError):
            ident = _read_identity(out)
        which = f"run {ident['run_id']} of {ident.get('created', '?')}" if ident else \
            f"a run ({', '.join(held)})"
        raise UsageError(f"{out} already holds {which}: continue it with fastppo run --resume "
                         f"{out}, or replace it with --overwrite")
    _write_identity(out, run_id, p)
    _io.remove_run_files(out, keep=(_io.RUN,))


def _resume(out, p, ident, run_id):
    """The PPOClip saved in ``out`` (locked), checked to be the run of its ``run.json``;
    a directory of an older fastppo (no ``run.json``) is adopted under ``run_id``."""
    import fastppo

    if ident is not None and params_digest(p) != ident["params_sha256"]:
        raise UsageError(f"{out}: config.json holds other parameters than the run "
                         f"{ident['run_id']} of run.json (two runs mixed in one directory): "
                         f"start again with --overwrite")
    ppo = fastppo.PPOClip.resume(out)
    if ident is None:  # adopted: the checkpoint first, so that it carries the id
        ppo.run_id = ppo.run_id or run_id
        ppo.save(out)
        _write_identity(out, ppo.run_id, p)
    elif ppo.run_id != ident["run_id"]:
        other = f"run {ppo.run_id}" if ppo.run_id else "no run (saved from Python)"
        raise UsageError(f"{out}: checkpoint.npz is of {other}, not of the run "
                         f"{ident['run_id']} of run.json (two runs mixed in one directory): "
                         f"start again with --overwrite")
    return ppo


def execute(p, out, *, progress=False, checkpoint_every=None, should_stop=None, resume=False,
            overwrite=False, config=None, say=None):
    """One PPO-Clip run with parameters ``p`` (keys of ``PARAMS``), saved to ``out``.

    Parameters
    ----------
    p : dict
        Run parameters; missing keys take the ``PARAMS`` defaults.
    out : str
        Result directory (see ``fastppo._io``), locked while the run goes on.
    progress : bool
        tqdm progress bar.
    checkpoint_every : int, optional
        Also save a checkpoint every this many outer iterations (saved in
        ``config.json``; a resumed run keeps it unless given).
    should_stop : callable, optional
        Polled before the first iteration and after each; True stops the run (it is
        then saved).
    resume : bool
        Continue the checkpoint in ``out`` up to ``p["iters"]`` iterations in total.
    overwrite : bool
        Start a new run in a directory that holds another run (its files are deleted).
    config : dict, optional
        Extra entries for ``config.json``.
    say : callable, optional
        Prints progress messages.

    Returns
    -------
    summary : dict
        mdp, reg, J, J_star, gap, iterations, converged, seconds, products, lr, out,
        interrupted, run_id.

    Raises
    ------
    UsageError
        Bad parameters, spec or files (including a damaged checkpoint on resume), a
        directory held by another run or locked.
    FloatingPointError, ConvergenceError
        The run failed numerically; the iterations before the failure are saved first.
    """
    import fastppo
    from . import _io

    say = say or (lambda *a: None)
    stopped = should_stop or (lambda: False)
    p = {**PARAMS, **normalize_params(p)}
    unknown = sorted(set(p) - set(PARAMS))
    if unknown:
        raise UsageError(f"unknown run parameter {unknown[0]!r}; choose from {', '.join(PARAMS)}")
    check_param_types(p)
    _check_every(checkpoint_every, "--checkpoint-every")
    with user_input():
        iters = V.check_int(p["iters"], "iters", minimum=0)
        tol = V.check_positive(p["tol"], "tol")
    if not resume:
        mdp = load_mdp(p)
        reg = parse_reg(p["reg"], p["tau"])
        settings = check_settings(p)
    if os.path.lexists(out) and not os.path.isdir(out):
        raise UsageError(f"{out} exists and is not a directory")
    os.makedirs(out, exist_ok=True)
    ident = _read_identity(out) if resume else None
    run_id = ident["run_id"] if ident else uuid.uuid4().hex
    with _io.locked(out, run_id):
        if resume:
            saved = read_config(out)
            ppo = _resume(out, p, _read_identity(out), run_id)
            mdp, reg, J_star = ppo.mdp, ppo.reg, ppo.reference
            if checkpoint_every is None:  # the run's own, saved in config.json
                checkpoint_every = _check_every(saved.get("checkpoint_every"),
                                                f"{os.path.join(out, _io.CONFIG)}: checkpoint_every")
            say(f"resuming {out} at iteration {ppo.n_iter}: {mdp}, regularizer {reg}")
        else:
            _claim(out, p, run_id, overwrite)
            clip = settings["clip"]
            say(f"{mdp}\nregularizer {reg}, clip {clip}, K={p['inner_steps']}, backend "
                f"{fastppo.get_backend() if p['backend'] is None else p['backend']}")
            t0 = time.perf_counter()
            opt = fastppo.solve(mdp, reg, backend=p["backend"], n_threads=p["threads"])
            J_star = opt.J
            say(f"optimum J* = {J_star:.12g} ({opt.n_iter} policy-iteration steps, "
                f"{time.perf_counter() - t0:.2f} s)")
            ppo = fastppo.PPOClip(mdp, reg, reference=J_star, **settings)
            ppo.run_id = run_id
        config = {"params": p, **(config or {}), "checkpoint_every": checkpoint_every,
                  "title": f"PPO-Clip, {mdp}\n{reg}"}
        _io.write_json(os.path.join(out, _io.CONFIG),
                       {"fastppo_version": fastppo.__version__, **config})

        done = start = ppo.n_iter
        if done and ppo.history["gap"][-1] <= p["tol"]:
            done = p["iters"]  # converged before: nothing left to do

        def callback(solver, row):
            if checkpoint_every and solver.n_iter % checkpoint_every == 0:
                solver.save(out)
            return stopped()

        t0 = time.perf_counter()
        try:
            res = ppo.run(0 if stopped() else max(iters - done, 0), tol=tol, callback=callback,
                          progress=progress)
        except (ArithmeticError, ConvergenceError) as exc:
            if ppo.n_iter > start:  # the method is back at its last good iterate: keep it
                _save_failed(ppo, out, config)
                exc.args = (f"{exc}; the {ppo.n_iter} iterations before it are saved in {out}",)
            raise
        seconds = time.perf_counter() - t0
        h = res.history
        res["converged"] = bool(len(h) and h["gap"][-1] <= tol)
        res.save(out, config)
    return dict(mdp=str(mdp), reg=str(reg), J=res.J, J_star=J_star, gap=res.gap,
                iterations=int(res.n_iter), converged=res.converged, seconds=seconds,
                products=int(h["n_matvec"].sum()), lr=ppo.lr, out=out,
                interrupted=bool(stopped()), run_id=ppo.run_id)


def _check_every(n, name):
    if n is not None and (isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1):
        raise UsageError(f"{name} must be >= 1, got {n!r}")
    return n


def _save_failed(ppo, out, config):
    """Save the iterations of a run that failed (the method is at its last good iterate):
    the whole result directory, or the checkpoint and history when even evaluating that
    iterate fails."""
    from . import _io

    try:
        res = ppo.result(converged=False)
    except (ArithmeticError, ConvergenceError):
        ppo.save(out)
        h = ppo.history
        _io.write_csv(os.path.join(out, _io.HISTORY), h, h.dtype.names)
        return
    res.save(out, config)
