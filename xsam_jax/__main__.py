"""`python -m xsam_jax` is `xsam-train`."""

import sys

from xsam_jax.cli import main

sys.exit(main())
