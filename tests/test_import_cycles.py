"""No import cycle among fastbert's modules, function-level imports included (scripts/import_cycles.py)."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("import_cycles", os.path.join(ROOT, "scripts", "import_cycles.py"))
import_cycles = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(import_cycles)


def test_fastbert_has_no_import_cycle(capsys):
    assert import_cycles.main(os.path.join(ROOT, "fastbert")) == 0, capsys.readouterr().out


def test_a_cycle_through_a_function_level_import_is_found(tmp_path, capsys):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n    return a\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    assert import_cycles.main(str(pkg)) == 1
    out = capsys.readouterr().out
    assert "import cycle among pkg.a, pkg.sub.b" in out and "b.py:2 imports pkg.a" in out and "pkg.c" not in out
