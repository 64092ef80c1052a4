from olmp.cli import main
import sys
sys.exit(main())
