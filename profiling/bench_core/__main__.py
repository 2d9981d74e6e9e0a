import sys

from profiling.bench_core.cli import main

sys.exit(main())
