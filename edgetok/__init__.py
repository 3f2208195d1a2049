"""edgetok: entropy-compressed semantic speech tokens on edge devices.

Importing this package never imports torch; training and build code lives in
``edgetok.train`` and the top-level build packages.
"""

__version__ = "0.1.0"
