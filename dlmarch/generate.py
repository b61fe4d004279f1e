"""`python -m dlmarch.generate --model DIR --prompt TEXT`: see dlmarch.sampling.cli.

(The sampler itself is `dlmarch.generate`, the function exported by the package.)
"""

import sys

from dlmarch.sampling.cli import main

if __name__ == "__main__":
    sys.exit(main())
