"""``slmtrain train`` from a checkout (the code is slmtrain/cli/train.py): train a model from a recipe."""

from slmtrain.cli.train import main

if __name__ == "__main__":
    main()
