"""Result rows and comparison tables: one JSON file per run, merged with pandas when read."""
from .rows import read_rows, write_json_atomic, write_row
from .tables import comparison_table, write_table

__all__ = ["read_rows", "write_json_atomic", "write_row", "comparison_table", "write_table"]
