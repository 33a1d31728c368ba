"""``python -m anchorbind.train`` / ``accelerate launch -m anchorbind.train``."""

from anchorbind.errors import run_command
from anchorbind.train.loop import main

if __name__ == "__main__":
    raise SystemExit(run_command("anchorbind train", main))
