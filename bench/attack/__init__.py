"""Issue 18's attacks on a real ``edgetok serve`` on loopback, and its "Done when" figures.

``python -m edgetok.bench.attack [--bundle DIR] [--only NAME]... [--json]`` runs each attack in
``edgetok.bench.attack.attacks`` against its own server process and prints one line (or one JSON
object) per attack with ``pass``: whether the issue's target is met.
"""
