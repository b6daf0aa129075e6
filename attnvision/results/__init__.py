"""Result rows, tables and plots: one JSON file per run, merged with pandas when read, drawn with matplotlib."""
from .plots import accuracy_figure, save_png, sweep_figure, throughput_figure
from .rows import read_rows, read_sweep_rows, write_json_atomic, write_row
from .tables import comparison_table, sweep_table, write_table

__all__ = ["read_rows", "read_sweep_rows", "write_json_atomic", "write_row", "comparison_table", "sweep_table",
           "write_table", "accuracy_figure", "throughput_figure", "sweep_figure", "save_png"]
