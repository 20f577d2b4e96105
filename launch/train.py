"""``slmtrain train`` from a checkout; the command is slmtrain/cli/train.py (``--help`` lists its keys)."""

from slmtrain.cli.train import main

if __name__ == "__main__":
    main()
