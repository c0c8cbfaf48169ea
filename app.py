"""chargpt-workbench entry point.

python app.py              open the workbench (prepares the default corpus on first run)
python app.py serve ...    the same, with --host/--port/--share/--auth/--auth-file/--allow-dir
python app.py COMMAND ...  the command line: prepare, train, chat, compare, tune, studies, proxy, dashboard
"""

from __future__ import annotations

import sys

from cli.main import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
