"""``python -m pyxenstored``: the daemon, as the ``pyxenstored`` command."""

import sys

from pyxenstored.cli.daemon import main

sys.exit(main())
