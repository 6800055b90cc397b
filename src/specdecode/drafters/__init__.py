"""Drafters, one module each; importing this package registers them all."""

from specdecode.drafters import ar, pld  # noqa: F401
