"""``python -m fedrec``: the ``fedrec`` command, for environments whose PATH lacks the console script."""

from fedrec.cli import app

if __name__ == "__main__":
    app(prog_name="fedrec")
