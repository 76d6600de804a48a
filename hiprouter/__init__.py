"""hiprouter: a DICOM node that routes hip and pelvis radiographs to AI inference."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hiprouter")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
