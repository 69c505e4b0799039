import sys

from infer.cli.main import main

sys.exit(main())
