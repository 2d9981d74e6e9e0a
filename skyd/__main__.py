import sys

from skyd.cli import main

sys.exit(main())
