"""``slmtrain route`` from a checkout; the command is slmtrain/cli/route.py (``--help`` lists its keys)."""

from slmtrain.cli.route import main

if __name__ == "__main__":
    main()
