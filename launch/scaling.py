"""``slmtrain scaling`` from a checkout; the command is slmtrain/cli/scaling.py (``--help`` lists its keys)."""

from slmtrain.cli.scaling import main

if __name__ == "__main__":
    main()
