import sys

from profiling.loadtest.cli import main

sys.exit(main())
