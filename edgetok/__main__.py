"""``python -m edgetok`` runs the CLI."""

from edgetok.cli import main

main()
