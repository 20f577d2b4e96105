"""``slmtrain train-quality`` from a checkout; the command is slmtrain/cli/train_quality.py (``--help`` lists its keys)."""

from slmtrain.cli.train_quality import main

if __name__ == "__main__":
    main()
