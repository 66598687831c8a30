"""`python -m modelrollout.cli ...`, as the image and the tests run it."""

import sys

from modelrollout.cli.main import main

sys.exit(main())
