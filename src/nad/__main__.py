import sys

from nad.cli import main

sys.exit(main())
