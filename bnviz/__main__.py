import sys

from bnviz.cli import main

sys.exit(main())
