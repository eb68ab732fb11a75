import sys

from transunet.cli import main

sys.exit(main())
