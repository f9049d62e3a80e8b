"""`python -m deliverypool.cli ...` is the `deliverypool` command."""

import sys

from deliverypool.cli import main

sys.exit(main())
