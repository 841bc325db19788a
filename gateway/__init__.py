"""Courtyard: an IoT integration gateway for residential communities."""

__version__ = "0.1.0"
