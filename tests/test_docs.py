"""Every public function and class documents every parameter (numpydoc)."""
import inspect
import re

import pytest

import fastppo

PUBLIC = [getattr(fastppo, name) for name in fastppo.__all__
          if inspect.isfunction(getattr(fastppo, name)) or inspect.isclass(getattr(fastppo, name))]


def documented(doc):
    """Names listed in the Parameters section (``a, b : type`` lines count all names)."""
    section = re.split(r"\n\s*Parameters\n\s*-+\n", doc or "")
    if len(section) < 2:
        return set()
    body = re.split(r"\n\s*[A-Z][a-z]+\n\s*-+\n", section[1])[0]
    names = set()
    for line in body.splitlines():
        m = re.match(r"^\s{0,8}([A-Za-z_][\w, ]*?)(\s*:|\s*$)", line)
        if m and line.strip() and not line.startswith(" " * 9):
            names.update(n.strip() for n in m.group(1).split(","))
    return names


@pytest.mark.parametrize("obj", PUBLIC, ids=lambda o: o.__name__)
def test_parameters_documented(obj):
    if inspect.isclass(obj):
        if obj.__init__ is object.__init__ or issubclass(obj, (dict, Exception)):
            return
        sig = inspect.signature(obj.__init__)
        docs = [c.__doc__ for c in obj.__mro__] + [obj.__init__.__doc__]
        doc = "\n".join(d for d in docs if d and "Parameters" in d)
    else:
        sig = inspect.signature(obj)
        doc = obj.__doc__
    params = [p for p in sig.parameters if p not in ("self", "kwargs", "args") and not p.startswith("_")]
    if not params:
        return
    names = set()
    for part in re.split(r"(?=\n\s*Parameters\n)", doc or ""):
        names |= documented(part)
    missing = [p for p in params if p not in names]
    assert not missing, f"{obj.__name__}: undocumented parameters {missing}"
