"""``python -m medseg`` runs the command-line interface."""

from medseg.cli import app

if __name__ == "__main__":
    app()
