"""The house stays readable in one sitting (../shared/style.md): no module of the method, the studies or the
analysis over 450 lines, no function over 80. A limit crossed is a concept to split out, not a number to raise."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = [p for folder in ("iabf", "studies", "analysis") for p in sorted((ROOT / folder).glob("*.py"))]


def test_every_module_is_at_most_450_lines_and_every_function_at_most_80():
    long_modules = [f"{p.relative_to(ROOT)}: {n} lines" for p in MODULES
                    if (n := len(p.read_text().splitlines())) > 450]
    long_functions = [f"{p.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
                      for p in MODULES for node in ast.walk(ast.parse(p.read_text()))
                      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.end_lineno - node.lineno + 1 > 80]
    assert not long_modules and not long_functions, "\n".join(long_modules + long_functions)
