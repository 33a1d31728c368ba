"""``python -m anchorbind.train`` / ``accelerate launch -m anchorbind.train``."""

from anchorbind.train.loop import main

if __name__ == "__main__":
    raise SystemExit(main())
