"""Static checks of the Slicer extension: the parts that only run inside the Slicer application
(``MedSAD.py``, ``MedSAD.ui``, the Segment Editor effect, the CMake files, the icons) are parsed
here, never run. Each helper returns what is wrong, and is also shown catching a broken input.

Inside Slicer, the module's own ``MedSADTest`` runs the widget's logic for real.
"""

from __future__ import annotations

import ast
import py_compile
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SLICER_DIR = ROOT / "MedSADSlicer"
MODULE_DIRS = sorted(p.parent for p in SLICER_DIR.glob("*/CMakeLists.txt"))
MEDSAD_PY = SLICER_DIR / "MedSAD" / "MedSAD.py"
UI_FILE = SLICER_DIR / "MedSAD" / "Resources" / "UI" / "MedSAD.ui"
EFFECT_PY = SLICER_DIR / "SegmentEditorMedSAD" / "SegmentEditorMedSADLib" / "SegmentEditorEffect.py"
LIB_DIR = SLICER_DIR / "MedSAD" / "MedSADLib"
EFFECT_LIB_DIR = SLICER_DIR / "SegmentEditorMedSAD" / "SegmentEditorMedSADLib"

EXTENSION_VARIABLES = (
    "EXTENSION_HOMEPAGE",
    "EXTENSION_CATEGORY",
    "EXTENSION_CONTRIBUTORS",
    "EXTENSION_DESCRIPTION",
    "EXTENSION_ICONURL",
    "EXTENSION_SCREENSHOTURLS",
    "EXTENSION_DEPENDS",
)
ICONS = {
    SLICER_DIR / "MedSAD" / "Resources" / "Icons" / "MedSAD.png": (128, 128),
    SLICER_DIR / "SegmentEditorMedSAD" / "SegmentEditorMedSADLib" / "SegmentEditorEffect.png": (21, 21),
}
# What MedSAD.py relies on in the .ui: widget name -> class.
EXPECTED_WIDGETS = {
    "MedSAD": "qMRMLWidget",
    "inputVolumeSelector": "qMRMLNodeComboBox",
    "backendComboBox": "QComboBox",
    "checkpointPathLineEdit": "ctkPathLineEdit",
    "serverUrlLineEdit": "QLineEdit",
    "profileLineEdit": "QLineEdit",
    "thresholdSliderWidget": "ctkSliderWidget",
    "calibratedThresholdCheckBox": "QCheckBox",
    "minLesionSpinBox": "QDoubleSpinBox",
    "minLesionMeanSpinBox": "QDoubleSpinBox",
    "applyButton": "QPushButton",
    "cancelButton": "QPushButton",
    "progressBar": "QProgressBar",
    "statusLabel": "QLabel",
    "scoresTableView": "qMRMLTableView",
    "goToWorstSliceButton": "QPushButton",
    "exportSegButton": "QPushButton",
    "outputSegmentationSelector": "qMRMLNodeComboBox",
    "installDependenciesButton": "QPushButton",
}


# --------------------------------------------------------------------------- CMake parsing

_CMAKE_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|#[^\n]*|[()]|[^\s()#"]+')


def cmake_commands(text: str) -> list[tuple[str, list[str]]]:
    """Each CMake command as (lower-case name, arguments); comments dropped, quotes removed."""
    commands: list[tuple[str, list[str]]] = []
    tokens = [t for t in _CMAKE_TOKEN.findall(text) if not t.startswith("#")]
    i = 0
    while i < len(tokens):
        if i + 1 < len(tokens) and tokens[i + 1] == "(" and tokens[i] not in "()":
            name, args, depth, i = tokens[i].lower(), [], 1, i + 2
            while i < len(tokens) and depth:
                depth += {"(": 1, ")": -1}.get(tokens[i], 0)
                if depth and tokens[i] not in "()":
                    args.append(tokens[i][1:-1] if tokens[i].startswith('"') else tokens[i])
                i += 1
            commands.append((name, args))
        else:
            i += 1
    return commands


def cmake_variables(text: str) -> dict[str, list[str]]:
    """Values of ``set(VAR ...)`` in order, with ``${VAR}`` of earlier variables expanded."""
    variables: dict[str, list[str]] = {}

    def expand(arg: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: " ".join(variables.get(m.group(1), [m.group(0)])), arg)

    for name, args in cmake_commands(text):
        if name == "set" and args:
            variables[args[0]] = [expand(a) for a in args[1:]]
    return variables


def cmake_mismatch(cmake_text: str, variable: str, on_disk: Iterable[str]) -> tuple[list[str], list[str]]:
    """(files on disk that ``variable`` does not list, listed files that are not on disk)."""
    listed = cmake_variables(cmake_text).get(variable, [])
    on_disk = set(on_disk)
    return sorted(on_disk - set(listed)), sorted(set(listed) - on_disk)


def module_files(module_dir: Path) -> tuple[list[str], list[str]]:
    """(Python scripts, resource files) of a scripted module folder, relative to it."""
    scripts, resources = [], []
    for path in sorted(module_dir.rglob("*")):
        rel = path.relative_to(module_dir)
        skip = (
            not path.is_file()
            or rel.name == "CMakeLists.txt"
            or path.suffix == ".pyc"
            or rel.parts[0] == "Testing"
            or any(part == "__pycache__" or part.startswith(".") for part in rel.parts)
        )
        if not skip:
            (scripts if path.suffix == ".py" else resources).append(rel.as_posix())
    return scripts, resources


def toplevel_problems(text: str, module_dirs: Iterable[str]) -> list[str]:
    """What the extension's top-level CMakeLists.txt lacks (Slicer's extension template)."""
    commands = cmake_commands(text)
    names = [name for name, _ in commands]
    variables = cmake_variables(text)
    problems = [f"{v} is not set" for v in EXTENSION_VARIABLES if not "".join(variables.get(v, [])).strip()]
    for name, args in (
        ("cmake_minimum_required", None),
        ("project", ["MedSAD"]),
        ("find_package", ["Slicer", "REQUIRED"]),
        ("include", ["${Slicer_USE_FILE}"]),
        ("include", ["${Slicer_EXTENSION_GENERATE_CONFIG}"]),
        ("include", ["${Slicer_EXTENSION_CPACK}"]),
    ):
        if not any(n == name and (args is None or a == args) for n, a in commands):
            problems.append(f"missing {name}({' '.join(args or [])})")
    subdirs = sorted(args[0] for name, args in commands if name == "add_subdirectory" and args)
    if subdirs != sorted(module_dirs):
        problems.append(f"add_subdirectory lists {subdirs}, module folders are {sorted(module_dirs)}")
    if (
        "find_package" in names
        and "add_subdirectory" in names
        and names.index("find_package") > names.index("add_subdirectory")
    ):
        problems.append("add_subdirectory comes before find_package(Slicer)")
    cpack = [i for i, (n, a) in enumerate(commands) if n == "include" and a == ["${Slicer_EXTENSION_CPACK}"]]
    if cpack and "add_subdirectory" in names and cpack[0] < len(names) - 1 - names[::-1].index("add_subdirectory"):
        problems.append("include(${Slicer_EXTENSION_CPACK}) must come after the modules")
    return problems


# --------------------------------------------------------------------------- Python / .ui parsing


def ui_widgets(ui_path: Path) -> dict[str, str]:
    """Widget name -> class in a Qt Designer file."""
    return {w.get("name"): w.get("class") for w in ET.parse(ui_path).getroot().iter("widget")}


def unknown_ui_names(py_text: str, widget_names: Iterable[str]) -> list[str]:
    """``self.ui.<name>`` (and ``widget.ui.<name>`` in the self-test) uses whose name is no
    widget of the .ui."""
    return sorted(set(re.findall(r"\b(?:self|widget)\.ui\.(\w+)", py_text)) - set(widget_names))


def top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def class_members(path: Path, class_name: str) -> set[str]:
    """Methods, properties and (dataclass) fields of a class, from the source."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            members = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
            members |= {
                n.target.id for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
            }
            members |= {
                t.id for n in node.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)
            }
            return members
    raise AssertionError(f"class {class_name} not found in {path}")


def unknown_attributes(py_text: str, pattern: str, members: set[str]) -> list[str]:
    """Attributes accessed through ``pattern`` (a regex ending before the dot) that are not members."""
    return sorted(set(re.findall(f"(?:{pattern})" + r"\.(\w+)", py_text)) - members)


def _local_module(dotted: str) -> Path | None:
    """The file of a module that lives in the extension (its module folders are on Slicer's path)."""
    for module_dir in MODULE_DIRS:
        base = module_dir.joinpath(*dotted.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def unresolved_imports(path: Path) -> list[str]:
    """``from X import y`` in ``path`` where X is an extension module that does not define y
    (nor, for a package, has a submodule y)."""
    missing = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            target = _local_module(node.module)
            if target is not None:
                defined = top_level_names(target)
                if target.name == "__init__.py":
                    defined |= {p.stem for p in target.parent.glob("*.py")}
                missing += [f"{node.module}.{a.name}" for a in node.names if a.name != "*" and a.name not in defined]
    return missing


def imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of every module that ``path`` (a module of ``package``) imports, at module
    level or inside functions; relative imports resolved, ``from P import m`` counted as P.m."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # the packages are flat: "." is the package, ".." lies outside it
                base = package if node.level == 1 else ""
                module = ".".join(p for p in (base, node.module) if p)
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names if a.name != "*")
    return names


def package_import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (``pkg`` for ``__init__``)."""
    package = package_dir.name
    modules = {package if p.name == "__init__.py" else f"{package}.{p.stem}": p for p in package_dir.glob("*.py")}
    return {
        name: {m for m in imported_modules(path, package) if m in modules and m != name}
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle (``[a, b, ..., a]``) among the modules other than the package's
    ``__init__`` (importing a submodule always runs ``__init__`` first: that is no circle); []
    when there is none."""
    packages = {name for name in graph if "." not in name}
    edges = {name: {m for m in targets if m not in packages} for name, targets in graph.items() if name not in packages}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str]:
        state[name] = 1
        stack.append(name)
        for target in sorted(edges.get(name, ())):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[name] = 2
        return []

    for name in sorted(edges):
        if name not in state:
            cycle = visit(name)
            if cycle:
                return cycle
    return []


def module_level_imports(path: Path) -> set[str]:
    """Top-level names of the modules ``path`` imports at module level (not inside functions)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a valid PNG; raises on anything else."""
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        if image.format != "PNG":
            raise ValueError(f"{path} is {image.format}, not PNG")
        image.load()
        return image.size


def _slicer_py_files() -> list[Path]:
    return sorted(p for p in SLICER_DIR.rglob("*.py") if "__pycache__" not in p.parts)


# --------------------------------------------------------------------------- (a) Python compiles


@pytest.mark.parametrize("path", _slicer_py_files(), ids=lambda p: p.relative_to(SLICER_DIR).as_posix())
def test_every_slicer_python_file_compiles(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "out.pyc"), doraise=True)


def test_a_syntax_error_is_reported(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def broken(:\n")
    with pytest.raises(py_compile.PyCompileError):
        py_compile.compile(str(bad), cfile=str(tmp_path / "bad.pyc"), doraise=True)


# --------------------------------------------------------------------------- (b) the .ui and the widget


def test_ui_root_is_a_qmrmlwidget_named_medsad():
    root = ET.parse(UI_FILE).getroot()
    assert root.findtext("class") == "MedSAD"
    top = root.find("widget")
    assert (top.get("class"), top.get("name")) == ("qMRMLWidget", "MedSAD")


def test_ui_has_every_widget_the_module_expects_with_its_class():
    widgets = ui_widgets(UI_FILE)
    wrong = {name: widgets.get(name) for name, cls in EXPECTED_WIDGETS.items() if widgets.get(name) != cls}
    assert not wrong, f"missing or of another class in {UI_FILE.name}: {wrong}"


def test_every_self_ui_name_in_medsad_py_is_a_widget_of_the_ui():
    text = MEDSAD_PY.read_text()
    assert re.search(r"self\.ui\.\w+", text), "MedSAD.py uses no self.ui widgets: the check would be vacuous"
    assert unknown_ui_names(text, ui_widgets(UI_FILE)) == []


def test_unknown_ui_names_reports_a_misspelt_widget():
    assert unknown_ui_names("self.ui.applyButton.enabled = self.ui.applyButon", ["applyButton"]) == ["applyButon"]


def test_medsad_py_loads_the_ui_file_that_exists():
    paths = re.findall(r'resourcePath\("([^"]+)"\)', MEDSAD_PY.read_text())
    assert paths == ["UI/MedSAD.ui"]
    assert (MEDSAD_PY.parent / "Resources" / paths[0]) == UI_FILE and UI_FILE.is_file()


def test_ui_declares_every_custom_widget_it_uses():
    root = ET.parse(UI_FILE).getroot()
    used = {w.get("class") for w in root.iter("widget")} | {"qMRMLWidget"}
    custom = {c.findtext("class"): c.findtext("header") for c in root.iter("customwidget")}
    undeclared = sorted(cls for cls in used if not cls.startswith("Q") and cls not in custom)
    assert undeclared == []
    assert all(header == f"{cls}.h" for cls, header in custom.items()), custom


def test_ui_connects_the_scene_to_every_mrml_widget():
    root = ET.parse(UI_FILE).getroot()
    widgets = ui_widgets(UI_FILE)
    mrml = {name for name, cls in widgets.items() if cls.startswith("qMRML") and name != "MedSAD"}
    connected = {
        c.findtext("receiver")
        for c in root.iter("connection")
        if c.findtext("sender") == "MedSAD"
        and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    assert mrml and connected == mrml
    ends = {c.findtext(tag) for c in root.iter("connection") for tag in ("sender", "receiver")}
    assert ends <= set(widgets), f"connections name unknown widgets: {ends - set(widgets)}"


def test_slicer_files_define_the_classes_slicer_looks_up_by_name():
    assert {"MedSAD", "MedSADWidget", "MedSADTest"} <= top_level_names(MEDSAD_PY)
    assert {
        "runTest",
        "test_local_backend_on_synthetic_volume",
        "test_bad_input_keeps_scene",
        "test_widget_follows_the_parameter_node",
    } <= class_members(MEDSAD_PY, "MedSADTest")
    registration = SLICER_DIR / "SegmentEditorMedSAD" / "SegmentEditorMedSAD.py"
    assert "SegmentEditorMedSAD" in top_level_names(registration)
    effect_api = {
        "clone",
        "icon",
        "helpText",
        "setupOptionsFrame",
        "setMRMLDefaults",
        "updateGUIFromMRML",
        "updateMRMLFromGUI",
        "onApply",
    }
    assert effect_api <= class_members(EFFECT_PY, "SegmentEditorEffect")


@pytest.mark.parametrize("path", [MEDSAD_PY, EFFECT_PY], ids=lambda p: p.name)
def test_imports_from_the_extension_name_what_it_defines(path):
    assert unresolved_imports(path) == []


def test_widget_and_effect_use_only_what_medsadlib_defines():
    logic, result, outputs, parameters = (
        class_members(LIB_DIR / "logic.py", "MedSADLogic"),
        class_members(LIB_DIR / "results.py", "MedSADResult"),
        class_members(LIB_DIR / "logic.py", "OutputNodes"),
        class_members(LIB_DIR / "parameters.py", "MedSADParameters"),
    )
    gui = top_level_names(LIB_DIR / "gui.py")
    for path in (MEDSAD_PY, EFFECT_PY):
        text = path.read_text()
        assert unknown_attributes(text, r"\blogic|MedSADLogic\([^()]*\)", logic) == [], path.name
        assert unknown_attributes(text, r"\b_?result", result) == [], path.name
        assert unknown_attributes(text, r"\b_?outputs", outputs) == [], path.name
        assert unknown_attributes(text, r"(?<![\w.])_?parameters|(?<![\w.])params", parameters) == [], path.name
        assert unknown_attributes(text, r"(?<![\w.])gui", gui) == [], path.name
    assert re.search(r"\bparams\.\w+", EFFECT_PY.read_text()) and re.search(r"\bgui\.\w+", EFFECT_PY.read_text())


def test_the_effect_does_not_import_the_widget_module():
    """The effect shares settings, dialogs and backends through MedSADLib, not through MedSAD.py."""
    effect_lib = [p for p in EFFECT_LIB_DIR.glob("*.py")]
    for path in [EFFECT_PY, *effect_lib]:
        modules = {m.split(".")[0] for m in imported_modules(path, "SegmentEditorMedSADLib")}
        assert "MedSAD" not in modules, path.name


def test_no_import_circles_among_the_lib_modules():
    for package_dir in (LIB_DIR, EFFECT_LIB_DIR):
        graph = package_import_graph(package_dir)
        assert len(graph) >= 3, graph
        assert find_cycle(graph) == [], package_dir.name
    graph = package_import_graph(LIB_DIR)
    # results is the root: it imports no other module of the package; gui is a leaf nothing imports
    assert graph["MedSADLib.results"] == set()
    assert not any("MedSADLib.gui" in targets for targets in graph.values())


def test_find_cycle_reports_the_old_nodes_backends_circle(tmp_path):
    package = tmp_path / "DemoLib"
    package.mkdir()
    (package / "__init__.py").write_text("from .backends import Backend\nfrom .nodes import helper\n")
    (package / "backends.py").write_text("from .nodes import helper\nclass Backend: ...\n")
    (package / "nodes.py").write_text("def helper():\n    from .backends import Backend\n    return Backend\n")
    graph = package_import_graph(package)
    assert graph["DemoLib.nodes"] == {"DemoLib.backends"}
    assert find_cycle(graph) in (
        ["DemoLib.backends", "DemoLib.nodes", "DemoLib.backends"],
        ["DemoLib.nodes", "DemoLib.backends", "DemoLib.nodes"],
    )
    (package / "nodes.py").write_text("def helper():\n    return 1\n")
    assert find_cycle(package_import_graph(package)) == []


def test_the_lib_modules_import_no_qt_at_module_level():
    """MedSADLib and the effect's Lib import under plain Python (slicer-core): only the effect
    class and the widget need Qt; ``gui`` imports it inside its functions."""
    for path in [*LIB_DIR.glob("*.py"), *EFFECT_LIB_DIR.glob("*.py")]:
        if path.name == "SegmentEditorEffect.py":
            continue
        assert not module_level_imports(path) & {"qt", "ctk", "PythonQt", "SegmentEditorEffects"}, path.name
    assert "import gui" not in (LIB_DIR / "__init__.py").read_text()


def test_unknown_attributes_reports_an_api_drift():
    members = class_members(LIB_DIR / "logic.py", "MedSADLogic")
    assert unknown_attributes("self.logic.run(v, b)\nself.logic.rerun(v)", r"\blogic", members) == ["rerun"]


# --------------------------------------------------------------------------- (c) module CMake lists


@pytest.mark.parametrize("module_dir", MODULE_DIRS, ids=lambda p: p.name)
def test_module_cmake_lists_exactly_the_files_on_disk(module_dir):
    text = (module_dir / "CMakeLists.txt").read_text()
    scripts, resources = module_files(module_dir)
    for variable, on_disk in (("MODULE_PYTHON_SCRIPTS", scripts), ("MODULE_PYTHON_RESOURCES", resources)):
        unlisted, missing = cmake_mismatch(text, variable, on_disk)
        assert (unlisted, missing) == ([], []), (
            f"{module_dir.name}/CMakeLists.txt {variable}: on disk but not listed {unlisted}; "
            f"listed but missing {missing}"
        )


@pytest.mark.parametrize("module_dir", MODULE_DIRS, ids=lambda p: p.name)
def test_module_cmake_builds_a_scripted_module_of_its_folder_name(module_dir):
    text = (module_dir / "CMakeLists.txt").read_text()
    assert cmake_variables(text).get("MODULE_NAME") == [module_dir.name]
    assert (module_dir / f"{module_dir.name}.py").is_file()
    [build] = [args for name, args in cmake_commands(text) if name == "slicermacrobuildscriptedmodule"]
    assert " ".join(build) == (
        "NAME ${MODULE_NAME} SCRIPTS ${MODULE_PYTHON_SCRIPTS} RESOURCES ${MODULE_PYTHON_RESOURCES} WITH_GENERIC_TESTS"
    )


def test_cmake_mismatch_reports_a_wrong_list():
    text = """
    set(MODULE_NAME Demo)  # a comment (with parentheses)
    set(MODULE_PYTHON_SCRIPTS
      ${MODULE_NAME}.py
      ${MODULE_NAME}Lib/gone.py
      )
    """
    assert cmake_variables(text)["MODULE_PYTHON_SCRIPTS"] == ["Demo.py", "DemoLib/gone.py"]
    on_disk = ["Demo.py", "DemoLib/__init__.py"]
    assert cmake_mismatch(text, "MODULE_PYTHON_SCRIPTS", on_disk) == (["DemoLib/__init__.py"], ["DemoLib/gone.py"])


def test_module_files_skips_caches_and_splits_scripts_from_resources(tmp_path):
    for rel in (
        "Demo.py",
        "DemoLib/a.py",
        "DemoLib/__pycache__/a.cpython-311.pyc",
        "Resources/UI/Demo.ui",
        "CMakeLists.txt",
        ".hidden",
        "Testing/Python/t.py",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    assert module_files(tmp_path) == (["Demo.py", "DemoLib/a.py"], ["Resources/UI/Demo.ui"])


# --------------------------------------------------------------------------- (d) top-level CMake


def test_toplevel_cmake_follows_the_extension_template():
    text = (ROOT / "CMakeLists.txt").read_text()
    modules = [d.relative_to(ROOT).as_posix() for d in MODULE_DIRS]
    assert modules, "no module folder with a CMakeLists.txt under MedSADSlicer/"
    assert toplevel_problems(text, modules) == []


def test_toplevel_cmake_metadata_values():
    variables = {k: " ".join(v) for k, v in cmake_variables((ROOT / "CMakeLists.txt").read_text()).items()}
    homepage = variables["EXTENSION_HOMEPAGE"]
    assert homepage == "https://github.com/medsad/medsad"
    assert variables["EXTENSION_CATEGORY"] == "Segmentation"
    assert variables["EXTENSION_DEPENDS"] == "NA"
    raw = homepage.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    icon = variables["EXTENSION_ICONURL"]
    assert icon.startswith(raw) and (ROOT / icon[len(raw) :]).is_file(), icon
    assert variables["EXTENSION_SCREENSHOTURLS"] == raw + "docs/slicer_screenshot.png"
    assert "not for clinical use" in variables["EXTENSION_DESCRIPTION"]


def test_toplevel_problems_reports_a_broken_file():
    broken = """
    cmake_minimum_required(VERSION 3.16.3...3.19.7 FATAL_ERROR)
    project(MedSAD)
    set(EXTENSION_HOMEPAGE "https://github.com/medsad/medsad")
    set(EXTENSION_CATEGORY "")
    add_subdirectory(MedSADSlicer/MedSAD)
    add_subdirectory(MedSADSlicer/Extra)
    find_package(Slicer REQUIRED)
    include(${Slicer_USE_FILE})
    include(${Slicer_EXTENSION_GENERATE_CONFIG})
    """
    problems = toplevel_problems(broken, ["MedSADSlicer/MedSAD"])
    assert "EXTENSION_CATEGORY is not set" in problems
    assert "EXTENSION_ICONURL is not set" in problems
    assert "missing include(${Slicer_EXTENSION_CPACK})" in problems
    assert "add_subdirectory comes before find_package(Slicer)" in problems
    assert any(p.startswith("add_subdirectory lists") for p in problems)


# --------------------------------------------------------------------------- (e) icons


@pytest.mark.parametrize("path, size", ICONS.items(), ids=lambda v: v.name if isinstance(v, Path) else str(v))
def test_icons_are_pngs_of_the_stated_size(path, size):
    assert png_size(path) == size


def test_png_size_rejects_a_file_that_is_not_a_png(tmp_path):
    from PIL import Image

    fake = tmp_path / "icon.png"
    Image.new("RGB", (21, 21)).save(fake, format="GIF")
    with pytest.raises(ValueError, match="not PNG"):
        png_size(fake)
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises((OSError, SyntaxError, ValueError)):  # what Pillow raises on a truncated PNG
        png_size(fake)
