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
"""
import contextlib
import inspect
import os
import time
import warnings

from . import _validation as V
from ._errors import UsageError

__all__ = ["DEFAULT_MDP", "PARAMS", "REGS", "execute", "load_mdp", "parse_clip", "parse_mdp",
           "parse_reg", "normalize_params", "check_settings", "user_input"]

DEFAULT_MDP = "garnet:S=50000,A=10,b=10,seed=0"
DEFAULT_REG = "forward-kl"
# The parameters of one PPO-Clip run (the options of `fastppo run`, the keys of a sweep).
PARAMS = dict(mdp=DEFAULT_MDP, mdp_file=None, gamma=None, seed=None, reg=DEFAULT_REG, tau=0.1,
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
    (a path to an ``.npz``), else the default spec."""
    import fastppo
    from ._io import READ_ERRORS, one_line

    path = p.get("mdp_file") or (fallback if p.get("mdp") is None else None)
    if path:
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
def execute(p, out, *, progress=False, checkpoint_every=None, should_stop=None, resume=False,
            config=None, say=None):
    """One PPO-Clip run with parameters ``p`` (keys of ``PARAMS``), saved to ``out``.

    Parameters
    ----------
    p : dict
        Run parameters; missing keys take the ``PARAMS`` defaults.
    out : str
        Result directory (see ``fastppo._io``); ``config.json`` is written first.
    progress : bool
        tqdm progress bar.
    checkpoint_every : int, optional
        Also save a checkpoint every this many outer iterations.
    should_stop : callable, optional
        Polled after each iteration; True stops the run (it is then saved).
    resume : bool
        Continue the checkpoint in ``out`` up to ``p["iters"]`` iterations in total.
    config : dict, optional
        Extra entries for ``config.json``.
    say : callable, optional
        Prints progress messages.

    Returns
    -------
    summary : dict
        mdp, reg, J, J_star, gap, iterations, converged, seconds, products, lr, out,
        interrupted.

    Raises
    ------
    UsageError
        Bad parameters, spec or files (including a damaged checkpoint on resume).
    """
    import fastppo
    from . import _io

    say = say or (lambda *a: None)
    p = {**PARAMS, **normalize_params(p)}
    unknown = sorted(set(p) - set(PARAMS))
    if unknown:
        raise UsageError(f"unknown run parameter {unknown[0]!r}; choose from {', '.join(PARAMS)}")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise UsageError(f"--checkpoint-every must be >= 1, got {checkpoint_every}")
    with user_input():
        iters = V.check_int(p["iters"], "iters", minimum=0)
        tol = V.check_positive(p["tol"], "tol")
    if resume:
        ppo = fastppo.PPOClip.resume(out)
        mdp, reg, J_star = ppo.mdp, ppo.reg, ppo.reference
        say(f"resuming {out} at iteration {ppo.n_iter}: {mdp}, regularizer {reg}")
    else:
        mdp = load_mdp(p)
        reg = parse_reg(p["reg"], p["tau"])
        settings = check_settings(p)
        clip = settings["clip"]
        say(f"{mdp}\nregularizer {reg}, clip {clip}, K={p['inner_steps']}, backend "
            f"{fastppo.get_backend() if p['backend'] is None else p['backend']}")
        t0 = time.perf_counter()
        opt = fastppo.solve(mdp, reg, backend=p["backend"], n_threads=p["threads"])
        J_star = opt.J
        say(f"optimum J* = {J_star:.12g} ({opt.n_iter} policy-iteration steps, "
            f"{time.perf_counter() - t0:.2f} s)")
        ppo = fastppo.PPOClip(mdp, reg, reference=J_star, **settings)
    os.makedirs(out, exist_ok=True)
    config = {"params": p, **(config or {}), "title": f"PPO-Clip, {mdp}\n{reg}"}
    _io.write_json(os.path.join(out, _io.CONFIG), {"fastppo_version": fastppo.__version__, **config})

    done = ppo.n_iter
    if done and ppo.history["gap"][-1] <= p["tol"]:
        done = p["iters"]  # converged before: nothing left to do

    def callback(solver, row):
        if checkpoint_every and solver.n_iter % checkpoint_every == 0:
            solver.save(out)
        return should_stop is not None and should_stop()

    t0 = time.perf_counter()
    res = ppo.run(max(iters - done, 0), tol=tol, callback=callback, progress=progress)
    seconds = time.perf_counter() - t0
    h = res.history
    res["converged"] = bool(len(h) and h["gap"][-1] <= tol)
    res.save(out, config)
    return dict(mdp=str(mdp), reg=str(reg), J=res.J, J_star=J_star, gap=res.gap,
                iterations=int(res.n_iter), converged=res.converged, seconds=seconds,
                products=int(h["n_matvec"].sum()), lr=ppo.lr, out=out,
                interrupted=bool(should_stop is not None and should_stop()))
