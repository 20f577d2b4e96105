"""``slmtrain serve`` from a checkout; the command is slmtrain/cli/serve.py (``--help`` lists its keys)."""

from slmtrain.cli.serve import main

if __name__ == "__main__":
    main()
