"""``slmtrain index`` from a checkout; the command is slmtrain/cli/index.py (``--help`` lists its keys)."""

from slmtrain.cli.index import main

if __name__ == "__main__":
    main()
