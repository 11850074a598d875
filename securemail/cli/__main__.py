"""``python -m securemail.cli``."""

import sys

from securemail.cli import main

sys.exit(main())
