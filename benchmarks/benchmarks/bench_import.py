"""Cold start, each sample in a fresh interpreter: ``import fastppo``, and the first
``evaluate`` after import (Numba cache load / Cython module import / SciPy import)."""


class ImportSuite:
    repeat = (3, 5, 10.0)
    rounds = 1

    def timeraw_import_fastppo(self):
        return "import fastppo"


class FirstCallSuite:
    params = [["numba", "cython", "numpy"]]
    param_names = ["backend"]
    repeat = (3, 5, 20.0)
    rounds = 1
    timeout = 300

    def timeraw_first_evaluate(self, backend):
        setup = ("import fastppo\n"
                 "m = fastppo.garnet(200, 4, 3, gamma=0.99, seed=0)\n"
                 "pi = m.uniform_policy()")
        stmt = f"fastppo.evaluate(m, pi, backend={backend!r}, n_threads=1)"
        return stmt, setup
