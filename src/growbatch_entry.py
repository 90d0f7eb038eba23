"""The ``growbatch`` console script, outside the package: a Ctrl-C while torch is imported ends quietly.

Importing ``growbatch`` loads torch (seconds); this module loads nothing first, so it can catch that Ctrl-C.
"""

import sys


def main() -> int:
    """Import the command line and run it; a Ctrl-C during the import is status 130, as one later."""
    try:
        from growbatch.cli import main as cli_main
    except KeyboardInterrupt:
        print("growbatch: interrupted", file=sys.stderr)
        return 130
    return cli_main()
