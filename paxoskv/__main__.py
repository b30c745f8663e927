import sys

from paxoskv.cli import main

sys.exit(main())
