import sys

from olmp.cli import main

sys.exit(main())
