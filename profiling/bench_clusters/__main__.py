import sys

from profiling.bench_clusters.cli import main

sys.exit(main())
