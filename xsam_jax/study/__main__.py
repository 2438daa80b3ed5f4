"""`python -m xsam_jax.study`: the study (see `xsam_jax.study`)."""

import sys

from xsam_jax.study import main

sys.exit(main())
