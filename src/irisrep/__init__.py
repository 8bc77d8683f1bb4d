"""irisrep: InterSystems IRIS-style data resiliency for Python."""

from .errors import *  # noqa: F403
from .errors import __all__ as _errors_all

__version__ = "0.1.0"
__all__ = ["__version__", *_errors_all]
