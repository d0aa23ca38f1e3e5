"""The `shrinkflow` command line (cli/main.py) and what it prints where (cli/console.py)."""
