"""``slmtrain export-hf`` from a checkout (the code is slmtrain/cli/export_hf.py): export a model to a Hugging Face directory (config.json + model.safetensors, and its tokenizer when known) that"""

from slmtrain.cli.export_hf import main

if __name__ == "__main__":
    main()
