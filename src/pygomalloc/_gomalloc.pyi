# The cffi extension module built by build_ext.py (see its cdef for the API).
from typing import Any

ffi: Any
lib: Any
