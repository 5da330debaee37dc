"""``python -m feclip`` (and ``torchrun -m feclip train ...``) runs the command line."""

from feclip.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
