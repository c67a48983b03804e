# SPDX-License-Identifier: MIT
# Runs pytest on the Python module's tests, or exits 77 (Meson's skip)
# saying which of NumPy and pytest the interpreter lacks.
import sys

missing = []
for mod in ('numpy', 'pytest'):
    try:
        __import__(mod)
    except ImportError:
        missing.append(mod)
if missing:
    print(f'SKIP: {sys.executable} lacks {", ".join(missing)} '
          '(apt install python3-numpy python3-pytest)', file=sys.stderr)
    sys.exit(77)
import pytest  # noqa: E402

sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-rs'] + sys.argv[1:]))
