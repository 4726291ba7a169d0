"""YAML recipes and task configs, shipped with the package (``configs/{pretrain,downstream,demo}/*.yaml``).

A package only so that an installed wheel carries the files as package data; code finds them through
:func:`common.resources.config_path`, never through paths relative to a source file.
"""
