"""The mount: pyfuse3 + trio over the engine. The only package that imports pyfuse3."""
