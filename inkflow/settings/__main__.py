"""
C{python -m inkflow.settings}: print the README's options table.
"""

from inkflow.settings.table import options_table_markdown

print(options_table_markdown())
