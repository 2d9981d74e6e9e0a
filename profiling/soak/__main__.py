import sys

from profiling.soak.cli import main

sys.exit(main())
