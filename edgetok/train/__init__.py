"""Training and export: the only package in ``edgetok`` that imports torch.

Nothing on the device path imports it; it needs the ``build`` extra.
"""
