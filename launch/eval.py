"""``slmtrain eval`` from a checkout; the command is slmtrain/cli/eval.py (``--help`` lists its keys)."""

from slmtrain.cli.eval import main

if __name__ == "__main__":
    main()
