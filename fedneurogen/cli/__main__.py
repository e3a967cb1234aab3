"""``python -m fedneurogen.cli``: the same as the ``fedneurogen`` command."""

from fedneurogen.cli import main

main()
