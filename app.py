"""The HTTP service. Not built yet: it arrives with issue #3.

Until then the whole product is usable from psql through the api schema; see
README.md, "From psql".
"""

import sys

if __name__ == "__main__":
    sys.exit("The HTTP service is not built yet; use the api schema from psql (README.md).")
