"""Seed: build a chat model you own from a stronger model you can call."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("seed")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"
