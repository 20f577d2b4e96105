"""``slmtrain leaderboard`` from a checkout; the command is slmtrain/cli/leaderboard.py (``--help`` lists its keys)."""

from slmtrain.cli.leaderboard import main

if __name__ == "__main__":
    main()
