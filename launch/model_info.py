"""``slmtrain model-info`` from a checkout; the command is slmtrain/cli/model_info.py (``--help`` lists its keys)."""

from slmtrain.cli.model_info import main

if __name__ == "__main__":
    main()
