"""Applications built on the native-mm library.

Each subpackage is one user of the library: it imports only the library's public API and
the library never imports it (``tests/test_imports.py`` walks the import graph to check).
An application adds its own CLI verbs through the ``native_mm.apps`` entry-point group.
"""
