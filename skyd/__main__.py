import sys

from skyd.server.cli import main

sys.exit(main())
