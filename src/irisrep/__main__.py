"""`python -m irisrep` is the `irisrep` command."""

from .cli import main

main()
