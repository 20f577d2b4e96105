"""``python -m slmtrain COMMAND ...``: the same as the ``slmtrain`` console command."""

from slmtrain.cli import main

main()
