"""aquamask: find water in satellite imagery and publish it through OGC APIs.

The repository keeps the card's folders (model/, processes/, server/, config/) at its top; the
package build installs them as ``aquamask.model``, ``aquamask.processes``, ``aquamask.server`` and
``aquamask.config``.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("aquamask")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
