"""`python -m seed` runs the CLI, so tests and scripts need no console script on PATH."""

from seed.cli import main

main()
