"""``slmtrain export-gguf`` from a checkout; the command is slmtrain/cli/export_gguf.py (``--help`` lists its keys)."""

from slmtrain.cli.export_gguf import main

if __name__ == "__main__":
    main()
