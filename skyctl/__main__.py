import sys

from skyctl.cli import main

sys.exit(main())
