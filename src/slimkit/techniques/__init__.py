"""Built-in techniques; importing this package registers them.

Each module imports its heavy libraries inside the functions, so registering costs nothing.
"""

from slimkit.techniques import cast, dynamic_int8
from slimkit.techniques.cast import Cast
from slimkit.techniques.dynamic_int8 import DynamicInt8

__all__ = ["Cast", "DynamicInt8", "cast", "dynamic_int8"]
