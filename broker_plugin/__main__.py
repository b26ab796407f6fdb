"""``python -m broker_plugin``: the same program as the ``bal-broker`` script."""

import sys

from broker_plugin.cli import main

sys.exit(main())
