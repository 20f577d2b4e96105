"""``slmtrain tokenize`` from a checkout (the code is slmtrain/cli/tokenize_data.py): train a tokenizer on a sample of curated text (unless already trained), then encode it into token shards."""

from slmtrain.cli.tokenize_data import main

if __name__ == "__main__":
    main()
