"""Small result objects: attribute access and a readable repr."""
import numpy as np


class Result(dict):
    """A dict whose keys are also attributes (scipy's OptimizeResult idea)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc

    __setattr__ = dict.__setitem__
    __delattr__ = dict.__delitem__

    def __dir__(self):
        return list(self.keys())

    def __repr__(self):
        def show(v):
            if isinstance(v, np.ndarray):
                return f"array(shape={v.shape}, dtype={v.dtype})"
            if isinstance(v, float):
                return f"{v:.6g}"
            return repr(v)

        width = max(map(len, self), default=0)
        body = "\n".join(f"  {k.rjust(width)}: {show(v)}" for k, v in self.items())
        return f"{type(self).__name__}(\n{body}\n)"
