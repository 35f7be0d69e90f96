"""`python -m lightnas_cli`: the `lightnas` command (what `lightnas launch` runs on each worker,
so a launch does not depend on a `lightnas` script on PATH)."""
from lightnas_cli.cli import main

if __name__ == "__main__":
    main()
