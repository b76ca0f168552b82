"""`python -m qwenvl_ft ...` is the same as the `qwenvl-ft` command (and works under torchrun)."""

from qwenvl_ft.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
