"""An lrscope plugin package: see README.md."""
