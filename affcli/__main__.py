"""`python -m affcli` (also what torchrun launches)."""

from affcli.cli import run

if __name__ == "__main__":
    run()
