"""`python -m zenlm` runs the `zen` command line."""

from zenlm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
