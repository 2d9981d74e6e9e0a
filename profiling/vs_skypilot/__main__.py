import sys

from profiling.vs_skypilot.cli import main

sys.exit(main())
