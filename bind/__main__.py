"""``python -m anchorbind``: the ``anchorbind`` command."""

from anchorbind.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
