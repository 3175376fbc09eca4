"""Parameter sweeps of PPO-Clip runs on Dask (``fastppo.sweep``, ``fastppo sweep config.toml``).

A sweep is the union of one or more grids; a grid maps run parameters (the options of
``fastppo run``: ``mdp``, ``seed``, ``reg``, ``tau``, ``clip``, ``inner_steps``, ``lr``,
``step_scale``, ...) to lists of values, and its runs are every combination. Parameters the
same for every run go in ``fixed``. In TOML::

    out = "sweep-out"          # sweep directory (relative to the config file)
    workers = 2                # LocalCluster workers when no scheduler is given

    [fixed]
    iters = 300
    backend = "cython"

    [grid]                     # or several [[grid]] tables: the union of their runs
    mdp = ["garnet:S=2000,A=4,b=5", "gridworld:H=20,W=20"]
    seed = [0, 1]
    tau = [0.05, 0.1]
    clip = [0.2, [0.1, 0.3]]   # eps, or [eps_low, eps_high]

Each run is independent and executes on a Dask worker (``dask.distributed``): a
``LocalCluster`` of ``workers`` single-threaded worker processes by default, or an
existing cluster given by its scheduler address (``tcp://host:port``), used unchanged
(its workers need fastppo installed and the sweep directory on a shared filesystem).
A script that calls ``sweep`` with the default LocalCluster must guard it with
``if __name__ == "__main__":`` (Dask starts its workers as fresh Python processes).
A run writes a result directory ``<out>/runs/<id>/`` (see ``fastppo._io``), where
``<id>`` is a hash of its parameters (and of the contents of its ``mdp_file``), and
finally ``row.json``; a rerun of the sweep skips every run whose ``row.json`` exists, so
an interrupted sweep resumes and a grown grid runs only its new points (an edited
``mdp_file`` makes new runs). Each run directory follows the rules of ``fastppo run``
(``fastppo.runs``): locked while its run goes on (a second sweep into the same ``out``
at the same time gets those runs as failed, naming the holder), and an unfinished
earlier attempt of the same run is replaced. A run that fails is reported in the table
(``status = "failed"`` and its error) without stopping the others, and is tried again
on the next rerun. The sweep writes ``<out>/results.csv`` (one row per run: its id,
the parameters, J, J*, gap, iterations, converged, seconds, products, status, error)
and one plot per MDP, ``<out>/plot-<mdp>.png`` (log gap against iteration, one curve
per run).
"""
import contextlib
import hashlib
import itertools
import json
import os
import re
import warnings

from ._errors import UsageError
from ._result import Result
from .runs import DEFAULT_MDP, PARAMS, RENAMED, check_param_types, normalize_params

__all__ = ["sweep"]

RESULTS = ("J", "J_star", "gap", "iterations", "converged", "seconds", "products")
COLUMNS = ("run", *PARAMS, *RESULTS, "status", "error")


def _read_config(config):
    if isinstance(config, dict):
        return dict(config), os.getcwd()
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    try:
        with open(config, "rb") as f:
            return tomllib.load(f), os.path.dirname(os.path.abspath(config))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{config}: not valid TOML: {exc}") from None


def expand(config):
    """The runs of a sweep configuration: a list of full parameter dicts, in grid order.
    A setting or parameter of the wrong type is a UsageError naming it."""
    unknown = set(config) - {"out", "workers", "fixed", "grid"}
    if unknown:
        raise UsageError(f"unknown sweep setting {sorted(unknown)[0]!r}; "
                         f"expected out, workers, [fixed], [grid]")
    fixed = config.get("fixed", {})
    if not isinstance(fixed, dict):
        raise UsageError(f"sweep setting 'fixed' must be a table, got {fixed!r}")
    grids = config.get("grid", [])
    grids = [grids] if isinstance(grids, dict) else grids
    if not isinstance(grids, list) or not all(isinstance(g, dict) for g in grids):
        raise UsageError(f"sweep setting 'grid' must be a table or a list of tables, got {grids!r}")
    if not grids:
        raise UsageError("the sweep has no [grid]")
    runs = []
    for grid in grids:
        for key, values in [*fixed.items(), *grid.items()]:
            if key not in PARAMS and key not in RENAMED:
                raise UsageError(f"unknown sweep parameter {key!r}; choose from {', '.join(PARAMS)}")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise UsageError(f"grid parameter {key!r} must be a non-empty list of values")
        for combo in itertools.product(*grid.values()):
            given = normalize_params({**fixed, **dict(zip(grid, combo))})
            check_param_types(given, "sweep parameter")
            run = {**PARAMS, **given}
            if run not in runs:
                runs.append(run)
    return runs


def run_id(params, mdp_digest=None):
    """A stable short id of a run's parameters (its directory name); ``mdp_digest`` (of
    the contents of its ``mdp_file``) is part of it when given."""
    text = json.dumps(params, sort_keys=True) + ("" if mdp_digest is None else mdp_digest)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _file_digest(path, cache):
    """SHA-256 of a file's contents (None when it cannot be read: the run reports that)."""
    if path not in cache:
        h = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            cache[path] = h.hexdigest()
        except OSError:
            cache[path] = None
    return cache[path]


def _run_one(params, folder):
    """One sweep run on a worker: a table row; exceptions become ``status = "failed"``."""
    from . import _io
    from .runs import execute

    row = {"run": os.path.basename(folder), **params}
    try:  # an unfinished earlier attempt of this run (no row.json) is replaced
        summary = execute(params, folder, overwrite=True)
    except Exception as exc:  # noqa: BLE001 -- reported in the table, the sweep goes on
        # a usage error raised from a library check reports that check's error type
        shown = exc.__cause__ if isinstance(exc, UsageError) and exc.__cause__ else exc
        return {**row, "status": "failed",
                "error": f"{type(shown).__name__}: {exc}".splitlines()[0]}
    row = {**row, **{k: summary[k] for k in RESULTS}, "status": "ok", "error": ""}
    _io.write_json(os.path.join(folder, _io.ROW), row)  # last: marks the run finished
    return row


@contextlib.contextmanager
def _client(scheduler, n_workers):
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise UsageError("sweeps need dask.distributed: pip install 'fastppo[sweep]'") from None
    if scheduler:
        with Client(scheduler) as client:
            yield client
    else:
        with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            yield client


def _slug(text):
    return re.sub(r"[^A-Za-z0-9=.]+", "_", text).strip("_")


def sweep(config, out=None, *, scheduler=None, n_workers=None, progress=False):
    """Run a grid of independent PPO-Clip runs on Dask; collect one table and plots.

    Parameters
    ----------
    config : str or dict
        A TOML file, or the same structure as a dict: ``fixed`` (dict), ``grid`` (a dict
        of lists, or a list of such dicts: the union of their runs), optional ``out``
        and ``workers``. Parameter names are those of ``fastppo run`` (``mdp``,
        ``mdp_file``, ``gamma``, ``seed``, ``reg``, ``tau``, ``clip``, ``inner_steps``,
        ``lr``, ``step_scale``, ``iters``, ``tol``, ``backend``, ``threads``).
    out : str, optional
        Sweep directory; default the config's ``out`` (relative to the TOML file), else
        ``fastppo-sweep``.
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:port``), used unchanged; by
        default a ``LocalCluster`` is started for the sweep and closed after it.
    n_workers : int, optional
        Workers of that LocalCluster (one thread each); default the config's ``workers``,
        else 2.
    progress : bool
        A tqdm bar over the finished runs.

    Returns
    -------
    Result
        ``rows`` (list of dicts, one per run in grid order: the table), ``csv`` (path
        of ``results.csv``), ``plots`` (paths), ``n_run`` (runs executed now),
        ``n_skipped`` (finished before), ``n_failed``.
    """
    from . import _io

    config, base = _read_config(config)
    runs = expand(config)
    if not isinstance(config.get("out", ""), str):
        raise UsageError(f"sweep setting 'out' must be a string, got {config['out']!r}")
    if out is None:
        out = os.path.join(base, config["out"]) if "out" in config else "fastppo-sweep"
    if n_workers is None:
        n_workers = config.get("workers", 2)
        if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
            raise UsageError(f"sweep setting 'workers' must be an integer >= 1, got {n_workers!r}")
    elif isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise UsageError(f"n_workers must be an integer >= 1, got {n_workers!r}")
    digests = {}
    folders = [os.path.join(out, "runs", run_id(p, p["mdp_file"] and _file_digest(
        p["mdp_file"], digests))) for p in runs]
    rows, todo = {}, []
    for p, folder in zip(runs, folders):
        done = os.path.join(folder, _io.ROW)
        row = None
        if os.path.exists(done):
            with contextlib.suppress(OSError, ValueError):  # a damaged row: run it again
                with open(done, encoding="utf-8") as f:
                    row = json.load(f)
        if isinstance(row, dict) and row.get("status") == "ok" and set(COLUMNS) <= set(row):
            rows[folder] = row
        else:
            todo.append((p, folder))
    if todo:
        with _client(scheduler, n_workers) as client:
            from dask.distributed import as_completed

            futures = {client.submit(_run_one, p, folder, pure=False): (p, folder)
                       for p, folder in todo}
            bar = None
            if progress:
                from tqdm.auto import tqdm
                bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="sweep", unit="run")
            for future in as_completed(futures):
                p, folder = futures[future]
                try:
                    rows[folder] = future.result()
                except Exception as exc:  # noqa: BLE001 -- the worker itself died
                    rows[folder] = {"run": os.path.basename(folder), **p, "status": "failed",
                                    "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
                if bar is not None:
                    bar.update()
            if bar is not None:
                bar.close()
    table = [rows[folder] for folder in folders]
    os.makedirs(out, exist_ok=True)
    csv_path = os.path.join(out, "results.csv")
    _io.write_csv(csv_path, [{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()}
                             for r in table], COLUMNS)
    plots = []
    def problem(r):
        return r["mdp_file"] or r["mdp"] or DEFAULT_MDP

    for mdp in dict.fromkeys(problem(r) for r in table):
        mine = [(r, f) for r, f in zip(table, folders) if problem(r) == mdp]
        varying = [k for k in PARAMS if k not in ("mdp", "mdp_file")
                   and len({json.dumps(r[k]) for r, _ in mine}) > 1]
        curves = []
        for r, f in mine:
            if r["status"] == "ok":
                try:
                    h = _io.read_history(os.path.join(f, _io.HISTORY))
                except UsageError as exc:  # a damaged file of a finished run: not plotted
                    warnings.warn(f"{exc}; run {r['run']} is left out of the plot", stacklevel=2)
                    continue
                curves.append((", ".join(f"{k}={r[k]}" for k in varying) or r["run"], h))
        if curves:
            plots.append(os.path.join(out, f"plot-{_slug(os.path.basename(mdp))}.png"))
            _io.plot_curves(plots[-1], curves, f"PPO-Clip sweep: {mdp}")
    n_failed = sum(r["status"] == "failed" for r in table)
    return Result(rows=table, csv=csv_path, plots=plots, n_run=len(todo),
                  n_skipped=len(runs) - len(todo), n_failed=n_failed)
