"""``slmtrain tokenize`` from a checkout; the command is slmtrain/cli/tokenize_data.py (``--help`` lists its keys)."""

from slmtrain.cli.tokenize_data import main

if __name__ == "__main__":
    main()
