"""``slmtrain bench-device`` from a checkout; the command is slmtrain/cli/bench_device.py (``--help`` lists its keys)."""

from slmtrain.cli.bench_device import main

if __name__ == "__main__":
    main()
