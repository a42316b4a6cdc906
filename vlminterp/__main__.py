"""``python -m vlminterp COMMAND ...``: the ``vlminterp`` command (:mod:`vlminterp.cli`).

Example (shell)::

    python -m vlminterp doctor
"""

import sys

from vlminterp.cli import main

sys.exit(main())
