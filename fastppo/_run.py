"""The run loop, the history and the checkpoint shared by every iterative method.

An iterative method (the exact ``PPOClip``, ``SoftmaxPG``, ``NPG``, ``KLPenaltyPPO`` of
``solvers.py``, the sample-based ``SampledPPO`` of ``sampled.py``) subclasses
:class:`IterativeMethod` and defines

- ``HISTORY``: the fields of its history (one row per iteration);
- ``step()``: one iteration, returning its row (also appended to the history);
- ``_final()``: ``(v, J, extras)`` of the current policy, for the :class:`RunResult`;
- ``_settings()``: the constructor keywords that rebuild it (JSON values);
- ``STATE``: the fields of its iterate beyond the common ones (below), with
  ``_state()`` / ``_set_state()`` to read and overwrite them.

**Checkpoint schema** (``checkpoint.npz``, format tag ``fastppo-checkpoint-2``; no
pickle). Common fields, then the method's own:

=============  ====================================================================
``format``     the tag ``"fastppo-checkpoint-2"``
``method``     class name (``"PPOClip"``, ``"NPG"``, ..., ``"SampledPPO"``)
``mdp_digest`` SHA-256 of the MDP (``mdp.npz`` beside it, or the MDP given to resume)
``regularizer`` JSON ``{"name", "tau", "alpha"}`` (``name`` from the table of
               ``regularizers.py``) or ``null``
``ref``        π_ref, (n_pairs,) float64, full support; absent for the uniform π_ref
``settings``   JSON object: the constructor keywords, exactly the method's set
``n_iter``     int ≥ 0, iterations done
``history``    structured array of ``HISTORY``, n_iter rows, ``iter`` = 1..n_iter
``reference``  J*, a finite float; absent when unknown
``logits``     (n_pairs,) float64, finite
``pi``         (n_pairs,) float64, a policy (sums to 1 per state) equal to softmax(logits)
``table``      bool: results come back as (S, A) tables
``run_id``     the id of the ``fastppo run`` that wrote it (32 hex digits, see
               ``fastppo.runs``); absent when saved from Python
=============  ====================================================================

The exact methods add ``mu`` (the weighting, (n_states,), a distribution with full
support) and the warm starts of their linear solves ``v_warm`` and ``d_warm``
((n_states,), finite, ``d_warm`` ≥ 0; absent before the first solve), the steps before
them ``v_step1``, ``d_step1``, ... ((n_states,), newest first, at most ``WARM_STEPS``)
and what the visitation's start is fitted on (``solvers.predicted_start``): ``pi_design``,
π at ``solvers.design_pairs`` of ``d_warm``'s policy, and ``d_design1``, ... the
CountSketches (``SKETCH_ROWS``,) of the policy steps behind ``d_step1``, ..., and what the
value start is fitted on: ``v_probe0`` (for ``v_warm``), ``v_probe1``, ... (v and Q̃ − r of
each solution at ``solvers.probe_points``; absent below ``PROBE_MIN`` probe states); their settings
are ``lr``, ``lin_tol``, ``warm_start``, ``backend``, ``n_threads`` (+ ``clip``,
``inner_steps`` for PPOClip; ``kl_target``, ``beta``, ``inner_steps`` for KLPenaltyPPO).
``SampledPPO`` adds the critic ``values`` ((n_states,), finite), ``v_exact`` (the warm
start of its exact evaluation), ``rng`` (JSON: the ``bit_generator.state`` of its numpy
Generator) and ``kl_coef`` (β now, ≥ 0); its settings are the fields of
``SampledPPOConfig``. Every member's uncompressed size is checked against what the MDP
needs before it is read.

Loading validates every field through ``_validation`` before anything reaches a
kernel, and rebuilds the method by calling its constructor with the saved settings
(the same checks as a new method), then overwrites the iterate with the validated
state. Unknown and missing fields are errors. A bad file raises :class:`UsageError`
(a ``ValueError``) as one line naming the file and the field. Untagged checkpoints
written by fastppo 0.1.0 are migrated to this schema (and then validated the same way).
"""
import json
import os
import re
import warnings

import numpy as np

from . import _validation as V
from ._errors import ConvergenceWarning, UsageError
from ._io import READ_ERRORS, one_line
from ._result import Result

__all__ = ["IterativeMethod", "RunResult", "FORMAT"]

FORMAT = "fastppo-checkpoint-2"
STALL_ITERATIONS = 5  # J unchanged this many iterations with a non-small gradient: a stall


class RunResult(Result):
    """Result of ``.run()``: ``policy``, ``logits``, ``v``, ``J``, ``history`` (structured
    array, one row per outer iteration), ``n_iter``, ``converged``, ``reference`` (J* or
    None), ``gap``; sample-based methods add ``kl_coef``."""

    def to_pandas(self):
        """The history as a pandas DataFrame (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(self.history)

    def save(self, path, config=None):
        """Write a result directory: ``result.npz``, ``history.csv``, ``config.json``,
        ``convergence.png``, and the checkpoint (``checkpoint.npz``, ``mdp.npz``) from which
        ``<Method>.resume(path)`` continues the run bit for bit (see ``fastppo._io``).

        Parameters
        ----------
        path : str or os.PathLike
            Directory, created if needed; existing files are replaced atomically.
        config : dict, optional
            JSON-serialisable entries added to ``config.json``.
        """
        from ._io import save_result

        save_result(path, self, config)


class IterativeMethod:
    """The run loop, history and checkpoint of an iterative method (see the module docstring)."""

    HISTORY = ()
    STATE = {}  # name -> (kind, optional): the method's own checkpoint fields

    # ----------------------------------------------------------------- history
    @property
    def history(self):
        """Per-iteration diagnostics as a structured array (the fields of ``HISTORY``)."""
        rows = [tuple(r.get(name, np.nan) for name, _ in self.HISTORY) for r in self._rows]
        return np.array(rows, dtype=self.HISTORY)

    # ---------------------------------------------------------------- run loop
    def _postfix(self, row):
        """The progress bar's fields for ``row``."""
        post = {"J": f"{row['J']:.6g}"}
        if self.reference is not None:
            post["gap"] = f"{row['gap']:.2e}"
        return post

    # what run(tol=...) compares with tol when J* is unknown (None: tol needs J*)
    FALLBACK_MEASURE = None

    def _tol_measure(self, row):
        """What ``run(tol=...)`` compares with tol: the gap J* − J when J* is known."""
        return row["gap"] if self.reference is not None else row[self.FALLBACK_MEASURE]

    def _stall_message(self, row):
        return None

    def run(self, n_iter, tol=None, callback=None, progress=False):
        """Run ``n_iter`` iterations (fewer if ``tol`` is reached or ``callback`` says stop).

        Parameters
        ----------
        n_iter : int
        tol : float, optional
            Stop when the suboptimality J* − J ≤ tol (needs ``reference``); exact
            methods without J* stop when the gradient norm ≤ tol.
        callback : callable, optional
            ``callback(method, row)`` after each iteration; returning True stops the run.
        progress : bool
            Show a tqdm progress bar (iterations counted from the start of the run,
            including those done before a resume) with J and the gap.

        Returns
        -------
        RunResult

        Raises
        ------
        FloatingPointError
            If an iterate leaves the range of doubles (non-finite logits, or a probability
            that underflowed to 0 where the next update divides by it or takes its log),
            naming the iteration; usually the step is too large. Whatever an iteration
            raises, the method is first put back in its state before that iteration
            (the iterations done stay: ``save`` keeps them, ``run`` continues from them).

        Warns
        -----
        ConvergenceWarning
            When the method stalls (J stops changing while the gradient is not small).
        """
        n_iter = V.check_int(n_iter, "n_iter", minimum=0)
        tol = V.check_positive(tol, "tol", allow_none=True)
        if tol is not None and self.reference is None and self.FALLBACK_MEASURE is None:
            raise ValueError(f"{type(self).__name__}.run(tol=...) needs a reference (J*)")
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.n_iter + n_iter, initial=self.n_iter,
                       desc=type(self).__name__, unit="it")
        converged, still = False, 0
        try:
            for _ in range(n_iter):
                last_J = self._rows[-1]["J"] if self._rows else np.nan
                before = self._entries()
                try:
                    row = self.step()
                except BaseException as exc:
                    self._rollback(before, exc)
                    raise
                message = self._stall_message(row)
                moving = abs(row["J"] - last_J) > 1e-14 * abs(row["J"])  # relative: any scale
                still = 0 if moving or message is None else still + 1
                if still == STALL_ITERATIONS:
                    warnings.warn(message, ConvergenceWarning, stacklevel=2)
                if bar is not None:
                    bar.set_postfix(self._postfix(row), refresh=False)
                    bar.update()
                if tol is not None and self._tol_measure(row) <= tol:
                    converged = True
                    break
                if callback is not None and callback(self, row):
                    break
        finally:
            if bar is not None:
                bar.close()
        return self.result(converged)

    def result(self, converged=False):
        """The :class:`RunResult` of the iterations done so far (what ``run`` returns).

        Parameters
        ----------
        converged : bool
            Recorded as the result's ``converged``.

        Returns
        -------
        RunResult
        """
        v, J, extras = self._final()
        like = None if self._table else self.logits
        res = RunResult(policy=self.mdp.to_table(self.pi.copy(), like=like),
                        logits=self.mdp.to_table(self.logits.copy(), like=like),
                        v=v, J=J, history=self.history, n_iter=self.n_iter,
                        converged=bool(converged), reference=self.reference,
                        gap=np.nan if self.reference is None else self.reference - J, **extras)
        # a snapshot for res.save() (attributes, not entries: not in the repr)
        object.__setattr__(res, "_state", self.state_dict())
        object.__setattr__(res, "_mdp", self.mdp)
        return res

    def _rollback(self, entries, exc):
        """Put the method back in the state ``entries`` (``_entries()`` taken before the
        step that raised ``exc``), rebuilt through the checkpoint loader as on resume. If
        that fails too, ``exc`` (the cause) is still what the caller sees, with a note."""
        n = int(entries["n_iter"])
        raw = {k: np.asarray(v) for k, v in {**entries, "history": self.history[:n]}.items()}
        try:
            restored = _restore(type(self), raw, self.mdp, "the state before the failed "
                                "iteration", "memory")
        except Exception as failed:  # noqa: BLE001 -- exc is the error to report
            note = f"(and the state before it could not be restored: {failed})"
            if hasattr(exc, "add_note"):  # Python >= 3.11
                exc.add_note(note)
            return
        vars(self).clear()
        vars(self).update(vars(restored))

    # ------------------------------------------------------------- checkpoints
    def state_dict(self):
        """The complete state of the method as the entries of ``checkpoint.npz`` (see the
        module docstring for the schema): everything needed to continue bit for bit.
        The MDP is not included (only its digest).

        Returns
        -------
        dict of str -> ndarray or scalar
        """
        return {**self._entries(), "history": self.history}

    # the run that owns the checkpoint (set by fastppo.runs; None from Python)
    run_id = None

    def _entries(self):
        """``state_dict()`` without the history (taken before every iteration: cheap)."""
        from ._io import mdp_digest

        if getattr(self, "_digest", None) is None:
            self._digest = mdp_digest(self.mdp)
        state = dict(format=FORMAT, method=type(self).__name__, mdp_digest=self._digest,
                     regularizer=json.dumps(_reg_spec(self.reg)),
                     settings=json.dumps(self._settings()), n_iter=np.int64(self.n_iter),
                     logits=self.logits.copy(), pi=self.pi.copy(), table=np.bool_(self._table))
        if self.reg is not None and self.reg.ref is not None:
            state["ref"] = self._ref  # never changes: not copied
        if self.reference is not None:
            state["reference"] = np.float64(self.reference)
        if self.run_id is not None:
            state["run_id"] = self.run_id
        for name, value in self._state().items():
            if value is not None:  # read-only arrays are never changed: shared, not copied
                copy = isinstance(value, np.ndarray) and value.flags.writeable
                state[name] = value.copy() if copy else value
        return state

    def save(self, path):
        """Write a checkpoint: ``checkpoint.npz`` (:meth:`state_dict`) and ``mdp.npz``.

        ``<Method>.resume(path)`` continues from it bit for bit. Writes are atomic, and
        ``mdp.npz`` is not rewritten when ``path`` already holds this MDP.

        Parameters
        ----------
        path : str or os.PathLike
            Directory, created if needed.
        """
        from ._io import save_checkpoint

        save_checkpoint(path, self.state_dict(), self.mdp)

    @classmethod
    def resume(cls, path, mdp=None):
        """The method saved in directory ``path`` (by :meth:`save` or ``RunResult.save``),
        ready to continue: ``.run(n)`` then gives exactly the iterates of an
        uninterrupted run.

        Parameters
        ----------
        path : str or os.PathLike
            A directory holding ``checkpoint.npz`` (and ``mdp.npz`` unless ``mdp`` is given).
        mdp : MDP, optional
            The MDP, instead of reading ``mdp.npz``; it must be the checkpoint's MDP.

        Returns
        -------
        instance of cls

        Raises
        ------
        FileNotFoundError
            No checkpoint in ``path``.
        UsageError
            (a ValueError) The checkpoint is damaged, of another method, of another MDP,
            or fails any check of the schema; the message names the file and the field.
        """
        from ._io import CHECKPOINT, MDP_FILE, read_npz

        folder = os.fspath(path)
        ckpt = os.path.join(folder, CHECKPOINT)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"no such directory: {folder}")
        if not os.path.exists(ckpt):
            raise FileNotFoundError(f"{folder} holds no checkpoint ({CHECKPOINT})")
        if mdp is None:
            mdp = _load_mdp(os.path.join(folder, MDP_FILE))
        raw = read_npz(ckpt, _size_limits(cls, mdp))
        if "format" not in raw:
            raw = _migrate_0_1(raw, ckpt)
        return _restore(cls, raw, mdp, ckpt, folder)


# ------------------------------------------------------------------ reading a checkpoint
COMMON = {"format": ("text", False), "method": ("text", False), "mdp_digest": ("text", False),
          "regularizer": ("json", False), "ref": ("pairs", True), "settings": ("json", False),
          "n_iter": ("count", False), "history": ("history", False),
          "reference": ("float", True), "logits": ("pairs", False), "pi": ("pairs", False),
          "table": ("bool", False), "run_id": ("text", True)}


HEADER = 4096  # bytes: an .npy header, with room to spare


def _size_limits(cls, mdp):
    """The largest uncompressed size each checkpoint member can need (``read_npz``):
    arrays by the MDP's sizes, the history by ``n_iter`` (read first: it is small)."""
    vector = 8 * max(mdp.n_pairs, mdp.n_states) + HEADER
    row = np.dtype(list(cls.HISTORY)).itemsize

    def limit(name, read):
        if name == "history":
            n = read.get("n_iter")
            ok = n is not None and n.ndim == 0 and n.dtype.kind in "iu"
            return row * (int(n) + 1) + HEADER if ok else HEADER
        return max(vector, 1 << 20)  # text members (settings, RNG state) stay far below 1 MiB

    return limit


def _load_mdp(path):
    from .mdp import MDP

    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path} (the MDP of the checkpoint)")
    try:
        return MDP.load(path)
    except READ_ERRORS as exc:
        raise UsageError(f"cannot read an MDP from {path}: {one_line(exc)}") from None


class _Fields:
    """The raw entries of a checkpoint, checked one at a time with errors naming the file."""

    def __init__(self, raw, path, schema):
        self.raw, self.path, self.schema = raw, path, schema
        unknown = sorted(set(raw) - set(schema))
        if unknown:
            self.fail(unknown[0], "unknown field (not in the checkpoint schema)")
        missing = [k for k, (_, optional) in schema.items() if not optional and k not in raw]
        if missing:
            self.fail(missing[0], "missing field")

    def fail(self, name, message):
        message = str(message)
        if message.split(" ", 1)[0] not in (name, f"{name}:"):
            message = f"{name}: {message}"
        raise UsageError(f"{self.path}: {message}")

    def get(self, name, check=None):
        """The field ``name`` (None if an absent optional one), through ``check(x, name)``."""
        if name not in self.raw:
            return None
        kind = self.schema[name][0]
        kind = {"pairs": "vector", "states": "vector", "history": "array"}.get(kind, kind)
        try:
            x = V.check_stored(self.raw[name], kind, name)
            return x if check is None else check(x, name)
        except UsageError:
            raise
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            self.fail(name, exc)


def _restore(cls, raw, mdp, path, folder):
    """Validate ``raw`` against the schema of ``cls`` and build the method (see module doc)."""
    from ._io import mdp_digest
    from .regularizers import REGULARIZERS, AlphaDivergence

    f = _Fields(raw, path, {**COMMON, **cls.STATE})
    fmt = f.get("format")
    if fmt != FORMAT:
        f.fail("format", f"unknown checkpoint format {fmt!r} (this fastppo reads {FORMAT!r})")
    method = f.get("method")
    if method != cls.__name__:
        raise UsageError(f"{path}: the state is of a {method}, not of a {cls.__name__}")
    if f.get("mdp_digest") != mdp_digest(mdp):
        raise UsageError(f"the MDP does not match the one of the checkpoint in {folder}")

    def regularizer(spec, name):
        if spec is None:
            return None
        if not isinstance(spec, dict) or set(spec) != {"name", "tau", "alpha"}:
            raise ValueError("must be null or an object with keys name, tau, alpha")
        reg_cls = REGULARIZERS.get(spec["name"]) if isinstance(spec["name"], str) else None
        if reg_cls is None:
            raise ValueError(f"unknown regularizer {spec['name']!r}; choose from "
                             f"{', '.join(REGULARIZERS)}")
        ref = f.get("ref")
        if reg_cls is AlphaDivergence:
            return reg_cls(spec["tau"], spec["alpha"], ref)
        if spec["alpha"] != 0:
            raise ValueError(f"alpha must be 0 for {spec['name']}, got {spec['alpha']!r}")
        return reg_cls(spec["tau"], ref)

    reg = f.get("regularizer", regularizer)
    if reg is None and "ref" in raw:
        f.fail("ref", "a reference policy without a regularizer")
    settings = f.get("settings", _check_settings(cls))
    n_iter = f.get("n_iter", lambda x, name: V.check_int(x, name, minimum=0))
    history = f.get("history", _check_history(cls, n_iter))
    reference = f.get("reference", lambda x, name: V.check_finite_float(x, name))
    logits = f.get("logits", lambda x, name: V.check_logits(mdp, _flat(x, mdp, name), name))
    pi = f.get("pi", lambda x, name: V.check_policy(mdp, _flat(x, mdp, name), name))
    table = f.get("table")
    state = {name: f.get(name, check) for name, check in cls._state_checks(mdp).items()}
    try:
        self = cls(mdp, reg, **settings, **cls._restore_arguments(state), init=logits,
                   reference=reference)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{path}: {one_line(exc)}") from None
    from .evaluation import softmax

    expected = softmax(mdp, logits, backend=self.backend, n_threads=self.n_threads)
    if not np.allclose(pi, expected, rtol=1e-6, atol=1e-12):
        k = int(np.argmax(np.abs(pi - expected)))
        f.fail("pi", f"does not match softmax(logits) at {mdp.pair_name(k)}: "
                     f"{pi[k]!r} vs {expected[k]!r}")
    self.logits, self.pi, self._table = logits, pi, bool(table)
    self.run_id = f.get("run_id", _check_run_id)
    self.n_iter = n_iter
    self._rows = [dict(zip(history.dtype.names, row)) for row in history.tolist()]
    try:
        self._set_state(state)
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise UsageError(f"{path}: {one_line(exc)}") from None
    return self


def _check_run_id(x, name):
    if not RUN_ID.fullmatch(x):
        raise ValueError(f"must be 32 hexadecimal digits, got {x[:40]!r}")
    return x


RUN_ID = re.compile("[0-9a-f]{32}")


def _flat(x, mdp, name):
    return V.check_length(x, mdp.n_pairs, name, "n_pairs")


def check_states(mdp, nonnegative=False):
    """The check of a saved (n_states,) vector (a warm start, a critic) on ``mdp``."""
    return lambda x, name: V.check_state_vector(x, mdp.n_states, name, nonnegative)


def _check_settings(cls):
    names = set(cls._setting_names())

    def check(x, name):
        if not isinstance(x, dict):
            raise TypeError(f"must be a JSON object, got {type(x).__name__}")
        unknown = sorted(set(x) - names)
        if unknown:
            raise ValueError(f"unknown setting {unknown[0]!r} for {cls.__name__}")
        missing = sorted(names - set(x))
        if missing:
            raise ValueError(f"missing setting {missing[0]!r}")
        return x

    return check


def _with_added_fields(cls, x):
    """A history saved before fields of ``cls.HISTORY_ADDED`` existed, with them filled in
    (e.g. ``n_passes`` = -1, not recorded); any other history unchanged."""
    added = getattr(cls, "HISTORY_ADDED", {})
    older = [(n, t) for n, t in cls.HISTORY if n not in added]
    if not added or x.dtype != np.dtype(older):
        return x
    full = np.empty(x.shape, dtype=list(cls.HISTORY))
    for name, _ in cls.HISTORY:
        full[name] = added[name] if name in added else x[name]
    return full


def _check_history(cls, n_iter):
    def check(x, name):
        x = _with_added_fields(cls, x)
        if x.dtype != np.dtype(list(cls.HISTORY)):
            raise TypeError(f"must be a structured array with fields "
                            f"{', '.join(n for n, _ in cls.HISTORY)}, got dtype {x.dtype}")
        if x.shape != (n_iter,):
            raise ValueError(f"must have n_iter = {n_iter} rows, got shape {x.shape}")
        if not np.array_equal(x["iter"], np.arange(1, n_iter + 1)):
            raise ValueError("its iter column must count 1, 2, ..., n_iter")
        return x

    return check


def _reg_spec(reg):
    if reg is None:
        return None
    return {"name": reg.name, "tau": reg.tau, "alpha": reg.alpha}


# --------------------------------------------------------- fastppo 0.1.0 checkpoints
_OLD_COMMON = {"method", "regularizer", "tau", "alpha", "reg_ref_given", "history", "__none__",
               "backend", "n_threads", "tol", "warm_start", "_code", "_alpha", "_tau", "_ref",
               "mu", "logits", "_table_like", "pi", "_v", "_d", "lr", "n_iter", "reference",
               "_mdp_digest"}
_OLD_EXTRA = {"PPOClip": {"eps_low", "eps_high", "inner_steps", "beta"},
              "SoftmaxPG": {"eps_low", "eps_high", "inner_steps", "beta"},
              "KLPenaltyPPO": {"eps_low", "eps_high", "inner_steps", "beta", "kl_target"},
              "NPG": {"_zeros_ok"}}


def _migrate_0_1(raw, path):
    """An untagged checkpoint of fastppo 0.1.0 (``vars(method)`` saved whole) in today's
    schema; the result goes through the same checks as a new checkpoint."""
    f = _Fields(raw, path, dict.fromkeys(raw, ("any", False)))
    method = raw.get("method")
    method = str(method) if method is not None and method.dtype.kind == "U" and method.ndim == 0 else None
    if method not in _OLD_EXTRA or "_mdp_digest" not in raw:
        raise UsageError(f"{path}: not a fastppo checkpoint (no format tag, and not one of "
                         f"fastppo 0.1.0)")
    allowed = _OLD_COMMON | _OLD_EXTRA[method]
    unknown = sorted(set(raw) - allowed)
    if unknown:
        f.fail(unknown[0], "unknown field in a fastppo 0.1.0 checkpoint")
    try:
        none = set(raw["__none__"].tolist()) if "__none__" in raw else set()
        if not none <= allowed or raw.get("__none__", np.array([], str)).dtype.kind not in "U":
            raise ValueError("bad __none__ list")

        def value(key):
            return None if key in none or key not in raw else raw[key]

        def scalar(key):
            x = value(key)
            return None if x is None else x.item()

        reg = None
        name = scalar("regularizer")
        if name != "none":
            reg = {"name": name, "tau": scalar("tau"), "alpha": scalar("alpha")}
        settings = {"lr": scalar("lr"), "lin_tol": scalar("tol"),
                    "warm_start": scalar("warm_start"), "backend": scalar("backend"),
                    "n_threads": scalar("n_threads")}
        if method in ("PPOClip", "KLPenaltyPPO"):
            settings["inner_steps"] = scalar("inner_steps")
        if method == "PPOClip":
            settings["clip"] = [scalar("eps_low"), scalar("eps_high")]
        if method == "KLPenaltyPPO":
            settings.update(kl_target=scalar("kl_target"), beta=scalar("beta"))
        like = value("_table_like")
        new = dict(format=np.array(FORMAT), method=np.array(method),
                   mdp_digest=raw["_mdp_digest"], regularizer=np.array(json.dumps(reg)),
                   settings=np.array(json.dumps(settings)), n_iter=raw["n_iter"],
                   history=raw["history"], logits=raw["logits"], pi=raw["pi"],
                   table=np.bool_(like is None or np.ndim(like) == 2), mu=raw["mu"])
        if reg is not None and scalar("reg_ref_given"):
            new["ref"] = raw["_ref"]
        for old, key in (("reference", "reference"), ("_v", "v_warm"), ("_d", "d_warm")):
            if value(old) is not None:
                new[key] = raw[old]
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise UsageError(f"{path}: a fastppo 0.1.0 checkpoint that cannot be migrated "
                         f"({one_line(exc)})") from None
    return new
