"""`python -m minference_flex COMMAND`: the commands live in minference_flex.cli.main."""

import sys

from minference_flex.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
