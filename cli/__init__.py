"""The click commands ``lrtrain`` and ``lrprobe``: thin, they parse, validate and call the library."""
