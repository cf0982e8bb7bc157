"""`python -m translator ...` runs the CLI (and is what torchrun launches)."""

from translator.cli import main

if __name__ == "__main__":
    main()
