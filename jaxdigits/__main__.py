"""``python -m jaxdigits`` runs the command line."""

from jaxdigits.cli import entry

entry()
