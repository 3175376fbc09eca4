"""Result directories and checkpoints on disk; every write is atomic.

A result directory (``RunResult.save``, ``fastppo run --out DIR``) holds

- ``result.npz``: arrays ``policy``, ``logits`` (table shape) and ``v`` (n_states,), and
  the scalars ``J``, ``gap``, ``n_iter``, ``converged``;
- ``history.csv``: one row per outer iteration, header = the history fields;
- ``config.json``: under ``method``, the method's name, regularizer and settings (its
  constructor keywords, verbatim: a ``SampledPPO``'s whole config), the fastppo
  version, and whatever the caller adds (the command line adds its full arguments);
- ``convergence.png``: log gap J* − J against the iteration (the gradient norm when J*
  is unknown);
- ``checkpoint.npz``: the method's complete state (``state_dict``; the schema, tagged
  ``fastppo-checkpoint-2``, is in ``fastppo._run``) and ``mdp.npz`` (``MDP.save``), from
  which ``<Method>.resume(DIR)`` continues bit for bit; every field is validated on load.
  ``mdp.npz`` is written only when the directory does not already hold this MDP, so
  checkpoints every few iterations do not rewrite it (a 50,000-state garnet is ~73 MB).

Atomic: each file is written to a temporary file in the same directory, flushed and
fsynced, then renamed over the target (``os.replace``). A process killed at any moment
leaves every file either at its previous complete version or at the new one (and
perhaps a stray ``.*.tmp``).

A directory of ``fastppo run`` (and each run of a sweep) also holds ``run.json``, the
run's identity, written before anything else (``fastppo.runs`` says how it is used),
and, while the run is going, the lock ``.fastppo.lock``: created with
``O_CREAT | O_EXCL`` (atomic on local and NFS filesystems, unlike ``flock``), holding
the host, pid and run id of its owner, removed by its owner when the run ends. A
lock whose owner is gone (a killed run) is reported, never removed silently.
"""
import contextlib
import csv
import hashlib
import json
import os
import socket
import tempfile
import time
import zipfile
import zlib

import numpy as np

CHECKPOINT, MDP_FILE, RESULT, HISTORY, CONFIG, PLOT = (
    "checkpoint.npz", "mdp.npz", "result.npz", "history.csv", "config.json", "convergence.png")
RUN, LOCK, ROW = "run.json", ".fastppo.lock", "row.json"
# the files of a run in its directory (row.json: a finished sweep run)
RUN_FILES = (RUN, CHECKPOINT, MDP_FILE, RESULT, HISTORY, CONFIG, PLOT, ROW)
RESULT_FILES = (CHECKPOINT, RESULT, HISTORY, ROW)  # those that hold iterations
# what reading a damaged or foreign file can raise (np.load, zipfile, MDP.load)
READ_ERRORS = (ValueError, TypeError, KeyError, IndexError, OSError, EOFError,
               zipfile.BadZipFile, zlib.error, NotImplementedError)
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside ``path``; on success fsync it and rename it to ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def write_json(path, obj):
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, default=_jsonable)
        f.write("\n")


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def write_csv(path, rows, fields):
    """Rows (dicts or a structured array) to CSV; floats are written with ``repr`` (exact)."""
    with atomic_write(path, "w") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for row in rows:
            values = [row[k] if not isinstance(row, dict) else row.get(k, "") for k in fields]
            w.writerow([repr(v) if isinstance(v, float) else v
                        for v in (x.item() if isinstance(x, np.generic) else x for x in values)])


def read_history(path):
    """A ``history.csv`` back as a structured array (float fields; ``iter`` int);
    UsageError naming the file if it cannot be read."""
    from ._errors import UsageError

    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if not rows:
            raise ValueError("empty file")
        fields = rows[0]
        dtype = [(k, np.int64 if k in ("iter", "n_matvec") else np.float64) for k in fields]
        return np.array([tuple(r) for r in rows[1:]],
                        dtype=[(k, "U32") for k in fields]).astype(dtype)
    except (*READ_ERRORS, csv.Error, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {one_line(exc)}") from None


def mdp_digest(mdp):
    """SHA-256 of an MDP's arrays and discount (identifies the MDP of a checkpoint)."""
    from .mdp import _ARRAYS

    h = hashlib.sha256(np.float64(mdp.gamma).tobytes())
    for name in (*_ARRAYS, "rho"):
        h.update(np.ascontiguousarray(getattr(mdp, name)).data)
    return h.hexdigest()


def one_line(exc):
    """The first line of an exception's message (its type name when empty)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_npz(path, max_bytes=None):
    """Every array of an ``.npz`` file, read in full (no pickle).

    Parameters
    ----------
    path : str or os.PathLike
    max_bytes : callable, optional
        ``max_bytes(name, read)`` is the largest uncompressed size (bytes) accepted for
        member ``name`` (None: any), given the members ``read`` so far; it is checked
        against the size the archive declares *before* the member is decompressed, so a
        small compressed file cannot expand to gigabytes. Members are read smallest first.

    Raises
    ------
    UsageError
        One line naming ``path`` if the file cannot be read (truncated, not a zip,
        object arrays, a member larger than ``max_bytes`` allows, ...).
    """
    from ._errors import UsageError

    try:
        with zipfile.ZipFile(path) as z:  # the declared (uncompressed) sizes
            sizes = {info.filename.removesuffix(".npy"): info.file_size for info in z.infolist()}
        out = {}
        with np.load(path, allow_pickle=False) as f:
            for name in sorted(f.files, key=lambda k: (sizes.get(k, 0), k)):
                limit = None if max_bytes is None else max_bytes(name, out)
                if limit is not None and sizes.get(name, 0) > limit:
                    raise ValueError(f"{name}: {sizes[name]} bytes uncompressed, more than the "
                                     f"{limit} it can need")
                out[name] = f[name]
        return out
    except READ_ERRORS as exc:
        raise UsageError(f"cannot read {path}: {one_line(exc)}") from None


def save_checkpoint(folder, state, mdp):
    """Write ``checkpoint.npz`` (the entries ``state``, see ``fastppo._run``) and ``mdp.npz``
    (unless ``folder`` already holds this MDP)."""
    os.makedirs(folder, exist_ok=True)
    ckpt = os.path.join(folder, CHECKPOINT)
    mdp_path = os.path.join(folder, MDP_FILE)
    stored = None
    if os.path.exists(mdp_path) and os.path.exists(ckpt):
        with contextlib.suppress(Exception):  # a damaged old checkpoint: rewrite both
            with np.load(ckpt, allow_pickle=False) as f:
                stored = str(f["mdp_digest"])
    if stored != state["mdp_digest"]:
        with atomic_write(mdp_path) as f:
            mdp.save(f)
    with atomic_write(ckpt) as f:
        np.savez(f, **{k: np.asarray(v) for k, v in state.items()})


def plot_curves(path, curves, title="", ylabel=None):
    """Semilog plot of several histories to a PNG (matplotlib, no pyplot, no GUI).

    Parameters
    ----------
    path : str
    curves : list of (label, structured ndarray)
        Each history is plotted as its gap J* − J against ``iter``, or where the gap is
        unknown (all NaN) as its distance to the target (``tv_target``, sample-based
        methods) or its gradient norm (exact methods); not at all if it has none of them.
    title, ylabel : str
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    measures = set()
    names = {"gap": "gap J* − J", "tv_target": "TV distance to the target",
             "grad_norm": "gradient norm"}
    for label, h in curves:
        measure = next((m for m in names if m in h.dtype.names and np.isfinite(h[m]).any()),
                       None)
        if measure is None:
            continue
        measures.add(measure)
        y = np.where(h[measure] > 0, h[measure], np.nan)  # log scale: round-off zeros omitted
        ax.semilogy(h["iter"], y, label=label, lw=1.4)
    ax.set_xlabel("outer iteration")
    default = (names[measures.pop()] if len(measures) == 1
               else "gap J* − J (else TV distance to the target, or gradient norm)")
    ax.set_ylabel(ylabel or default)
    ax.set_title(title, fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=7)
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110)


def save_result(folder, result, config=None):
    """Write a result directory (see the module docstring) for a ``RunResult``."""
    from . import __version__

    os.makedirs(folder, exist_ok=True)
    state = getattr(result, "_state", None)
    settings = {} if state is None else {
        "method": str(state["method"]), "regularizer": json.loads(str(state["regularizer"])),
        **json.loads(str(state["settings"]))}
    with atomic_write(os.path.join(folder, RESULT)) as f:
        np.savez(f, policy=result.policy, logits=result.logits, v=result.v, J=result.J,
                 gap=result.gap, n_iter=result.n_iter, converged=result.converged)
    h = result.history
    write_csv(os.path.join(folder, HISTORY), h, h.dtype.names)
    write_json(os.path.join(folder, CONFIG),
               {"fastppo_version": __version__, "method": settings, **(config or {})})
    method = settings.get("method", "")
    plot_curves(os.path.join(folder, PLOT), [(method, h)], (config or {}).get("title", method))
    if state is not None:  # last: the checkpoint is what --resume reads
        save_checkpoint(folder, state, result._mdp)


# ------------------------------------------------------------- run directories
def run_files(folder):
    """The files of a run (``RUN_FILES``) that ``folder`` holds."""
    return [name for name in RUN_FILES if os.path.lexists(os.path.join(folder, name))]


def remove_run_files(folder, keep=()):
    """Delete the files of a run in ``folder`` (and stray temporary files of their
    atomic writes), except ``keep``; other files are left alone."""
    names = set(RUN_FILES) - set(keep)
    for name in os.listdir(folder):
        stray = name.startswith(".") and name.endswith(".tmp") and any(
            name.startswith(f".{n}.") for n in names)
        if name in names or stray:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, name))


@contextlib.contextmanager
def locked(folder, run_id):
    """Hold the lock of run directory ``folder`` (which must exist) for run ``run_id``.

    Raises
    ------
    UsageError
        The lock exists: one line naming its holder (host, pid, run id), and whether
        that process is still running (when it is on this host); a stale lock is
        reported with how to remove it, never broken here.
    """
    from ._errors import UsageError

    path = os.path.join(folder, LOCK)
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "run_id": run_id,
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_UMASK)
    except FileExistsError:
        raise UsageError(lock_message(folder, path)) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(holder, f)
            f.flush()
            os.fsync(f.fileno())
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            with open(path, encoding="utf-8") as f:
                ours = json.load(f) == holder
            if ours:  # not if someone removed it and another run took it since
                os.unlink(path)


def lock_message(folder, path):
    """Who holds the lock ``path`` of ``folder``, for the one-line error."""
    try:
        with open(path, encoding="utf-8") as f:
            holder = json.load(f)
        host, pid, run_id = str(holder["host"]), holder["pid"], str(holder["run_id"])
        started = str(holder.get("started", "?"))
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise ValueError(f"bad pid {pid!r}")
    except (OSError, ValueError, TypeError, KeyError) as exc:
        return (f"{folder} is locked by another run ({path} exists but cannot be read: "
                f"{one_line(exc)}); if no fastppo run is writing to {folder}, delete {path}")
    who = f"run {run_id} (pid {pid} on {host}, started {started})"
    if host != socket.gethostname():
        return (f"{folder} is in use by {who}; if that process is no longer running, "
                f"delete {path}")
    if _alive(pid):  # (or its pid was reused since: then the lock is stale)
        return (f"{folder} is in use by {who}, which is still running (if pid {pid} is "
                f"another program, delete {path})")
    return (f"{folder} is locked by {who}, which is no longer running (it was killed): "
            f"if no other fastppo run is writing to {folder}, delete {path}")


def _alive(pid):
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or a pid kill() cannot take): assume alive
    return True
