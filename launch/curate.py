"""``slmtrain curate`` from a checkout; the command is slmtrain/cli/curate.py (``--help`` lists its keys)."""

from slmtrain.cli.curate import main

if __name__ == "__main__":
    main()
