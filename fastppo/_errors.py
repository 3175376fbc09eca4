"""fastppo's error and warning classes, and the helper that deprecates renamed parameters.

Three kinds of failure, one rule (the command line's exit status in brackets):

- ``UsageError`` (a ``ValueError``): the user's input — an argument, an environment
  variable, a file — is wrong; raised where the input is read or checked [2];
- a numerical failure: ``FloatingPointError``, ``ConvergenceError`` [1];
- anything else is a bug in fastppo and keeps its traceback [1].

``ConvergenceWarning``: an iterative method stopped improving before its tolerance
(a stall); the result is returned, flagged ``converged=False``.
"""
import functools
import warnings

__all__ = ["UsageError", "ConvergenceWarning", "renamed_parameters"]


class UsageError(ValueError):
    """Bad user input (argument, environment variable or file): one line, exit status 2."""


class ConvergenceWarning(RuntimeWarning):
    """An iterative method stalled: its progress measure stopped decreasing before the tolerance."""


REMOVED_IN = "0.3.0"


def renamed_parameters(**old_to_new):
    """Decorator: keyword ``old`` still works as ``new``, with a ``DeprecationWarning``.

    Passing both names is a ``TypeError``. The old names are accepted until fastppo
    ``REMOVED_IN``.

    Examples
    --------
    >>> @renamed_parameters(lam="gae_lambda")
    ... def f(gae_lambda):
    ...     return gae_lambda
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always")
    ...     f(lam=0.9), w[0].category.__name__
    (0.9, 'DeprecationWarning')
    """

    def decorate(func):
        name = func.__qualname__.removesuffix(".__init__")

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{name}: give {new}= only ({old}= is its old name)")
                    warnings.warn(f"{name}: {old}= is deprecated and will be removed in fastppo "
                                  f"{REMOVED_IN}; use {new}=", DeprecationWarning, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        return wrapper

    return decorate
