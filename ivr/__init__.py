"""Décroché: a controller beside Asterisk that makes public-service phone lines answer."""

__version__ = "0.1.0"
