"""The command line: `python app.py <command>`; each subcommand is a thin call into core/."""
