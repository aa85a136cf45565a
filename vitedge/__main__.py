"""`python -m vitedge` runs the CLI."""

from vitedge.cli import main

main()
