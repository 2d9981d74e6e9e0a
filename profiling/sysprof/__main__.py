import sys

from profiling.sysprof.cli import main

sys.exit(main())
