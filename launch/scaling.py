"""``slmtrain scaling`` from a checkout (the code is slmtrain/cli/scaling.py): scaling laws from the command line."""

from slmtrain.cli.scaling import main

if __name__ == "__main__":
    main()
