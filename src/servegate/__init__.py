"""servegate: take a model from training to a gated production deployment.

The public API is small; import submodules for the rest (``servegate.pipeline``,
``servegate.backends.torchserve``, ``servegate.packaging.mar``, ``servegate.harness``).
"""

from servegate.errors import GateFailed, ServegateError

__version__ = "0.1.0"
__all__ = ["GateFailed", "ServegateError", "__version__"]
