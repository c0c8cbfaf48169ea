"""chargpt-workbench entry point.

python app.py              open the workbench (prepares the default corpus on first run)
python app.py COMMAND ...  the command line: prepare, train, chat, tune, studies, dashboard, serve
"""

from __future__ import annotations

import sys

from core.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
