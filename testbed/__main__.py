"""`python -m testbed demo|boot|cleanup`: see testbed/demo.py (`make demo` runs `demo`)."""

import sys

from testbed.demo import main

sys.exit(main())
