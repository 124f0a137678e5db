"""`python -m controlplane` runs the command line."""

from controlplane.cli import main

main()
