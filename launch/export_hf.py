"""``slmtrain export-hf`` from a checkout; the command is slmtrain/cli/export_hf.py (``--help`` lists its keys)."""

from slmtrain.cli.export_hf import main

if __name__ == "__main__":
    main()
