import sys

from zguard.cli import main

sys.exit(main())
