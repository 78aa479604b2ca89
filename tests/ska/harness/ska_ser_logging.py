"""Stands in for SKA's logging package (on SKA's own package index, not PyPI), which SKA's library
imports to configure logging: the standard library's configuration does here."""

import logging


def configure_logging(level: int = logging.INFO, **_: object) -> None:
    logging.basicConfig(level=level)
