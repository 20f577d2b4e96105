"""``slmtrain finetune`` from a checkout; the command is slmtrain/cli/finetune.py (``--help`` lists its keys)."""

from slmtrain.cli.finetune import main

if __name__ == "__main__":
    main()
