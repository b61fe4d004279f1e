"""`python -m dlmarch.generate --model DIR --prompt TEXT` (or the `dlmarch-generate` console script):
see dlmarch.sampling.cli.

The sampler itself is `dlmarch.generate`, the function the package exports. Importing this module
would rebind that name to the module (Python sets a package's attribute to each imported
submodule), so it runs only as a command and refuses to be imported.
"""

import sys

if __name__ != "__main__":
    raise ImportError("dlmarch.generate is the command `python -m dlmarch.generate`; the sampler function is "
                      "`from dlmarch import generate` (the CLI's code is dlmarch.sampling.cli)")

from dlmarch.sampling.cli import main  # noqa: E402

sys.exit(main())
