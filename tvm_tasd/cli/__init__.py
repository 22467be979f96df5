"""The ``tasd`` and ``tvmc`` commands: thin argument parsing over the library.

:mod:`~tvm_tasd.cli.common` holds what both share (parser, error handling,
``--input-shapes``); :mod:`~tvm_tasd.cli.tasd` and :mod:`~tvm_tasd.cli.tvmc`
are the two commands, :mod:`~tvm_tasd.cli.demo` the ``tasd demo`` job.
They import the library, never each other; the library never imports them.
"""
