"""servegate: take a model from training to a gated production deployment.

The library API is ``servegate.api`` (deploy, rollback, package, load_model) with the settings
of ``servegate.config`` and the errors of ``servegate.errors``; ``servegate.targets`` and
``servegate.backends`` are where a new server plugs in, ``servegate.testing`` holds the fakes.
"""

from servegate.errors import GateFailed, ServegateError

__version__ = "0.1.0"
__all__ = ["GateFailed", "ServegateError", "__version__"]
