"""``slmtrain route`` from a checkout (the code is slmtrain/cli/route.py): route each query to the local model or the cloud, with a threshold calibrated to a quality target."""

from slmtrain.cli.route import main

if __name__ == "__main__":
    main()
