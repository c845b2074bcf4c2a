"""`python -m affcli` (also what torchrun launches)."""

from affcli.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
