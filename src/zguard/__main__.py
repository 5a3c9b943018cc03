import sys

from zguard.cli.main import main

sys.exit(main())
