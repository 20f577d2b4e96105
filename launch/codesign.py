"""``slmtrain codesign`` from a checkout; the command is slmtrain/cli/codesign.py (``--help`` lists its keys)."""

from slmtrain.cli.codesign import main

if __name__ == "__main__":
    main()
