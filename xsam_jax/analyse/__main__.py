"""`python -m xsam_jax.analyse`: the `xsam-analyse` command."""

import sys

from xsam_jax.analyse.cli import main

sys.exit(main())
