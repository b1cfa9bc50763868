import sys

from wodrop.cli import main

sys.exit(main())
