"""Built-in techniques, one file each.

The registry imports the modules here that register a technique (`@technique(...)`) when a
technique is first looked up; nothing lists them, so a new technique is one new file. Each module
imports its heavy libraries inside its functions, so registering costs nothing.
"""
