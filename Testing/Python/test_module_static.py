"""Static checks of the Slicer extension files (no Slicer needed): UI names, CMake lists, Python 3.9 grammar,
the logic's independence from Qt, the thin widget, extension metadata and icons.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
import zlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "ASSFTModule"
MODULE_FILE = MODULE_DIR / "ASSFTModule.py"
LIB_DIR = MODULE_DIR / "ASSFTModuleLib"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "ASSFTModule.ui"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
TOP_CMAKE = REPO / "CMakeLists.txt"
INDEX_JSON = REPO / "ASSFT.json"

#: Files that may use Qt and Slicer's GUI helpers (they run only in desktop Slicer).
GUI_FILES = {MODULE_FILE, LIB_DIR / "jobRunner.py", LIB_DIR / "installer.py"}


def modulePythonFiles() -> list:
    return sorted(MODULE_DIR.rglob("*.py"))


def logicFiles() -> list:
    return [path for path in modulePythonFiles() if path not in GUI_FILES]


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))


def uiWidgetNames() -> set:
    root = ElementTree.parse(UI_FILE).getroot()
    return {element.get("name") for element in root.iter("widget")}


def selfUiNames(tree: ast.AST) -> set:
    names = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"
            and node.value.attr == "ui"
        ):
            names.add(node.attr)
    return names


def classNode(tree: ast.Module, name: str) -> ast.ClassDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"class {name} not found")


def cmakeList(text: str, variable: str) -> list:
    match = re.search(r"set\(\s*" + variable + r"\s+(.*?)\)", text, re.S)
    assert match, f"set({variable} ...) not found"
    return match.group(1).split()


def test_every_ui_name_the_module_uses_exists_in_the_ui_file():
    used = selfUiNames(parse(MODULE_FILE))
    defined = uiWidgetNames()

    assert used, "the widget uses no self.ui names; the check would be empty"
    assert sorted(used - defined) == []


def test_ui_parameter_bindings_name_parameter_node_fields():
    tree = parse(MODULE_FILE)
    fields = {
        node.target.id for node in classNode(tree, "ASSFTModuleParameterNode").body if isinstance(node, ast.AnnAssign)
    }
    root = ElementTree.parse(UI_FILE).getroot()
    bound = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[widget.get("name")] = prop.find("string").text

    assert bound, "no widget is bound to the parameter node"
    assert sorted(set(bound.values()) - fields) == []
    assert len(set(bound.values())) == len(bound), "two widgets bound to one parameter"


def test_query_rounds_spin_box_sits_beside_the_budget_and_is_bound_to_the_parameter_node():
    """Query rounds (the multi-round test-time query) is a whole number >= 1 in the parameter node, default 1, set by
    a spin box next to the budget whose range is the one the logic accepts."""
    sys.path[:0] = [str(REPO), str(MODULE_DIR)]
    try:
        from ASSFTModuleLib.parameters import DEFAULT_QUERY_ROUNDS, MAX_QUERY_ROUNDS
    finally:
        del sys.path[:2]
    root = ElementTree.parse(UI_FILE).getroot()
    layout = next(layout for layout in root.iter("layout") if layout.get("name") == "budgetLayout")
    widgets = {w.get("name"): w for w in layout.iter("widget")}
    assert {"budgetSpinBox", "queryRoundsSpinBox"} <= set(widgets)
    spinBox = widgets["queryRoundsSpinBox"]
    properties = {p.get("name"): p for p in spinBox.findall("property")}
    assert spinBox.get("class") == "QSpinBox"
    assert properties["SlicerParameterName"].find("string").text == "queryRounds"
    assert int(properties["minimum"].find("number").text) == 1
    assert int(properties["maximum"].find("number").text) == MAX_QUERY_ROUNDS
    field = next(
        node
        for node in classNode(parse(MODULE_FILE), "ASSFTModuleParameterNode").body
        if isinstance(node, ast.AnnAssign) and node.target.id == "queryRounds"
    )
    assert ast.unparse(field.annotation) == "Annotated[int, WithinRange(1, parameters.MAX_QUERY_ROUNDS)]"
    assert ast.unparse(field.value) == "parameters.DEFAULT_QUERY_ROUNDS" and DEFAULT_QUERY_ROUNDS == 1


def test_ui_file_has_a_qmrmlwidget_root_and_declares_its_custom_widgets():
    root = ElementTree.parse(UI_FILE).getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "ASSFTModule"
    declared = {element.find("class").text for element in root.iter("customwidget")}
    used = {element.get("class") for element in root.iter("widget")}
    custom = {name for name in used if name.startswith(("ctk", "qMRML", "qSlicer"))}
    assert sorted(custom - declared) == []


@pytest.mark.parametrize("path", modulePythonFiles(), ids=lambda p: str(p.relative_to(REPO)))
def test_module_file_parses_with_python_3_9_grammar(path):
    tree = parse(path)
    for node in ast.walk(tree):
        assert not isinstance(node, getattr(ast, "Match", ())), f"{path}: match statement needs Python 3.10"
    if any(isinstance(node, (ast.AnnAssign, ast.arg)) and getattr(node, "annotation", None) for node in ast.walk(tree)):
        futures = [node for node in tree.body if isinstance(node, ast.ImportFrom) and node.module == "__future__"]
        assert any(alias.name == "annotations" for node in futures for alias in node.names), (
            f"{path}: annotations need 'from __future__ import annotations' on Python 3.9"
        )


def test_runtime_evaluated_annotations_use_no_pep604_unions():
    """The parameter node's annotations are evaluated at run time (typing.get_type_hints) on Python 3.9."""
    tree = parse(MODULE_FILE)
    for node in classNode(tree, "ASSFTModuleParameterNode").body:
        if isinstance(node, ast.AnnAssign):
            assert not any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(node.annotation))
    for path in modulePythonFiles():
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
                assert not any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(node.args[1]))


def importedModules(tree: ast.AST) -> set:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def attributeChains(tree: ast.AST) -> set:
    chains = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts = []
            current = node
            while isinstance(current, ast.Attribute):
                parts.append(current.attr)
                current = current.value
            if isinstance(current, ast.Name):
                chains.add(".".join([current.id] + parts[::-1]))
    return chains


@pytest.mark.parametrize("path", logicFiles(), ids=lambda p: str(p.relative_to(REPO)))
def test_logic_files_use_no_qt_ctk_or_slicer_gui_helpers(path):
    tree = parse(path)
    imports = importedModules(tree)
    chains = attributeChains(tree)

    forbidden = {name for name in imports if name.split(".")[0] in ("qt", "ctk", "PythonQt")}
    forbidden |= {
        name
        for name in imports
        if name.startswith(
            ("slicer.util", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "slicer.i18n")
        )
    }
    forbidden |= {
        chain
        for chain in chains
        if chain.startswith(("slicer.util", "slicer.app", "slicer.modules", "slicer.mrmlScene", "qt.", "ctk."))
    }
    assert sorted(forbidden) == []


@pytest.mark.parametrize("path", modulePythonFiles(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_file_imports_torch_or_installs_at_import_time(path):
    tree = parse(path)
    assert not {name for name in importedModules(tree) if name.split(".")[0] in ("torch", "monai")}
    for node in tree.body:  # statements run at import: everything but function and class bodies
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for call in ast.walk(node):
            if isinstance(call, ast.Call):
                name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
                assert name not in ("pip_install", "ensureWorkerRequirements", "installTorch"), (
                    f"{path}: installs packages at import time"
                )


def libFilesNeedingSlicerCore() -> set:
    """Stems of the lib files that need slicer-core at import: they import ``slicer`` or ``vtk``, or a lib file
    that does."""
    imports = {}
    for path in LIB_DIR.glob("*.py"):
        tree = parse(path)
        relative = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                relative |= {node.module} if node.module else {alias.name for alias in node.names}
        imports[path.stem] = ({name.split(".")[0] for name in importedModules(tree)}, relative)
    needing = {stem for stem, (absolute, _) in imports.items() if absolute & {"slicer", "vtk"}}
    while True:
        more = {stem for stem, (_, relative) in imports.items() if relative & needing} - needing
        if not more:
            return needing
        needing |= more


def test_importing_the_logic_files_loads_no_torch_in_a_clean_interpreter():
    """The GUI process never imports torch: the logic uses only the engine's torch-free modules (DESIGN.md §4-5).

    Plain-Python files are imported everywhere; the MRML files (and those importing them) when slicer-core is
    installed.
    """
    haveSlicerCore = importlib.util.find_spec("slicer") is not None and importlib.util.find_spec("vtk") is not None
    skipped = set() if haveSlicerCore else libFilesNeedingSlicerCore()
    names = sorted(
        f"ASSFTModuleLib.{path.stem}" for path in logicFiles() if path.parent == LIB_DIR and path.stem not in skipped
    )
    assert {"ASSFTModuleLib.jobProcess", "ASSFTModuleLib.jobController", "ASSFTModuleLib.modelCard"} <= set(names)
    assert {"ASSFTModuleLib.logic", "ASSFTModuleLib.jobFolder"} <= set(names) or not haveSlicerCore
    code = (
        f"import importlib, sys; sys.path[:0] = [{str(REPO)!r}, {str(MODULE_DIR)!r}]\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "assert 'ASSFTActive.jobs' in sys.modules and 'ASSFTActive.cards' in sys.modules\n"
        "assert 'torch' not in sys.modules\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'monai')))\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert output.returncode == 0, output.stderr[-3000:]
    assert output.stdout.strip().splitlines()[-1] == "[]"


def test_widget_holds_no_computation():
    tree = parse(MODULE_FILE)
    widget = classNode(tree, "ASSFTModuleWidget")
    names = {node.id for node in ast.walk(widget) if isinstance(node, ast.Name)}
    chains = attributeChains(widget)

    assert not names & {"np", "numpy", "vtk_to_numpy", "numpy_support"}
    assert not {
        chain
        for chain in chains
        if chain.split(".")[-1]
        in ("arrayFromVolume", "updateVolumeFromArray", "GetImageData", "AddNewNodeByClass", "GetNumberOfNodesByClass")
    }
    # scene work goes through the logic
    assert any(chain.startswith("self.sceneLogic.") for chain in chains)
    parameterNode = classNode(tree, "ASSFTModuleParameterNode")
    assert any(isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in parameterNode.decorator_list)


def test_module_file_holds_no_job_or_model_logic():
    """The widget and the module logic only wire: jobs, processes, the device probe, the end of a job and which
    model becomes active belong to the job controller (ASSFTModuleLib.jobController); model names to the engine."""
    tree = parse(MODULE_FILE)
    wiring = [classNode(tree, "ASSFTModuleWidget"), classNode(tree, "ASSFTModuleLogic")]
    topLevelImports = importedModules(
        ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], type_ignores=[])
    )
    names = set()
    for node in wiring:
        names |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
    strings = {
        n.value for node in wiring for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }

    assert not names & {
        "QProcess",
        "JobRunner",
        "SubprocessJobRunner",
        "workerCommand",
        "deviceProbeCommand",
        "parseDeviceProbe",
        "prepareJob",
        "loadJobResult",
        "readJobResult",
        "activeModel",
        "adaptedModel",
        "activationReason",
        "terminateProcessTree",
        "signalProcesses",
        "modelReferenceFor",
        "DEFAULT_MODEL",
        "pruneJobFolders",
        "eventFraction",
        "formatEvent",
        "cardCheckCommand",
        "parseCardCheck",
        "CardCheck",
    }
    assert not {s for s in strings if "-adapted" in s or "ASSFTActive.worker" in s or "check-card" in s}
    assert not {
        name
        for name in topLevelImports
        if name.startswith(
            (
                "ASSFTModuleLib.jobRunner",
                "ASSFTModuleLib.jobFolder",
                "ASSFTModuleLib.jobProcess.workerCommand",
                "ASSFTModuleLib.jobProcess.formatEvent",
                "ASSFTModuleLib.jobProcess.ProcessTreeStopper",
                "ASSFTModuleLib.jobProcess.JobRunCore",
            )
        )
    }
    widget = classNode(tree, "ASSFTModuleWidget")
    init = next(n for n in widget.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    assert "controller" in [a.arg for a in init.args.args], "the widget receives its job controller"
    chains = attributeChains(widget)
    assert {
        "self.controller.startJob",
        "self.controller.cancel",
        "self.controller.probeDevice",
        "self.controller.checkCard",
    } <= chains
    # the only slice view change is the user's click on a row, never the end of a job
    onFinished = next(n for n in widget.body if isinstance(n, ast.FunctionDef) and n.name == "onJobFinished")
    assert not {
        c for c in attributeChains(onFinished) if c.endswith(("showRankingRow", "setSliceViewerLayers", "showCase"))
    }


def test_module_has_a_scripted_loadable_module_test_with_run_test():
    tree = parse(MODULE_FILE)
    test = classNode(tree, "ASSFTModuleTest")
    assert [base.id for base in test.bases if isinstance(base, ast.Name)] == ["ScriptedLoadableModuleTest"]
    methods = {node.name for node in test.body if isinstance(node, ast.FunctionDef)}
    assert {"runTest", "setUp"} <= methods and any(name.startswith("test_") for name in methods)
    for name in ("ASSFTModule", "ASSFTModuleWidget", "ASSFTModuleLogic"):
        classNode(tree, name)


def test_every_file_listed_in_the_module_cmake_exists_and_every_lib_file_is_listed():
    text = MODULE_CMAKE.read_text(encoding="utf-8").replace("${MODULE_NAME}", "ASSFTModule")
    scripts = cmakeList(text, "MODULE_PYTHON_SCRIPTS")
    resources = cmakeList(text, "MODULE_PYTHON_RESOURCES")

    missing = [name for name in scripts + resources if not (MODULE_DIR / name).is_file()]
    assert missing == []
    listedLib = {name for name in scripts if name.startswith("ASSFTModuleLib/")}
    onDisk = {str(path.relative_to(MODULE_DIR)) for path in LIB_DIR.glob("*.py")}
    assert sorted(onDisk - listedLib) == [], "these files would not be installed"
    resourceFiles = {str(p.relative_to(MODULE_DIR)) for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file()}
    assert sorted(resourceFiles - set(resources)) == [], "these resources would not be installed"
    assert "WITH_GENERIC_TESTS" in text and "slicerMacroBuildScriptedModule(" in text
    assert "slicer_add_python_unittest(SCRIPT ASSFTModule.py)" in text
    for source in re.findall(r"set\(MODULE_REQUIREMENTS_FILE\s+\$\{CMAKE_CURRENT_SOURCE_DIR\}/(\S+)\)", text):
        assert (MODULE_DIR / source).resolve().is_file()


def test_extension_description_is_short_names_contributors_with_affiliation_and_states_the_data_licence():
    text = TOP_CMAKE.read_text(encoding="utf-8")
    contributors = re.search(r"set\(EXTENSION_CONTRIBUTORS \"([^\"]+)\"\)", text).group(1)
    for contributor in contributors.split(","):
        assert re.fullmatch(r"\s*[^()]+ \([^()]+\)\s*", contributor), f"not 'Name (Affiliation)': {contributor!r}"
    description = re.search(r"set\(EXTENSION_DESCRIPTION \"([^\"]+)\"\)", text).group(1)
    assert len(description) <= 300 and description.count(". ") <= 2  # one or two sentences, plus the licence
    assert "CC-BY-SA 4.0" in description
    for jargon in ("diversified knowledge divergence", "anatomical segmentation difficulty"):
        assert jargon not in description


def test_top_level_cmake_follows_the_extension_template():
    text = TOP_CMAKE.read_text(encoding="utf-8")

    for variable in (
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_DEPENDS",
    ):
        assert re.search(r"set\(" + variable + r" \"[^\"]+\"\)", text), variable
    # every screenshot URL names a file of this repository (none is allowed; a URL without its file is not)
    screenshots = re.search(r"set\(EXTENSION_SCREENSHOTURLS \"([^\"]*)\"\)", text).group(1).split()
    for url in screenshots:
        relative = re.match(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/main/(\S+)$", url)
        assert relative and (REPO / relative.group(1)).is_file(), f"screenshot {url} has no file in the repository"
    assert re.search(r"project\(ASSFT\)", text)
    assert "find_package(Slicer REQUIRED)" in text and "include(${Slicer_USE_FILE})" in text
    assert "include(${Slicer_EXTENSION_GENERATE_CONFIG})" in text and "include(${Slicer_EXTENSION_CPACK})" in text
    subdirectories = re.findall(r"add_subdirectory\((\w+)\)", text)
    assert subdirectories == ["ASSFTModule"]
    assert all((REPO / name / "CMakeLists.txt").is_file() for name in subdirectories)
    # the engine is installed beside the module, from its own folder
    assert "ASSFTActive/*.py" in text and (REPO / "ASSFTActive" / "__init__.py").is_file()
    icon = re.search(r"set\(EXTENSION_ICONURL \"[^\"]+/main/(\S+)\"\)", text).group(1)
    assert (REPO / icon).is_file()


def test_extensions_index_entry_matches_the_schema_and_the_cmake_metadata():
    entry = json.loads(INDEX_JSON.read_text(encoding="utf-8"))
    allowed = {
        "$schema",
        "category",
        "scm_url",
        "scm_revision",
        "scm_type",
        "build_dependencies",
        "build_subdirectory",
        "enabled",
        "tier",
    }

    assert {"$schema", "category", "scm_url"} <= set(entry) <= allowed
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert entry.get("tier", 5) in (1, 3, 5)
    depends = re.search(r"set\(EXTENSION_DEPENDS \"([^\"]+)\"\)", TOP_CMAKE.read_text(encoding="utf-8")).group(1)
    expected = [] if depends == "NA" else depends.split()
    assert entry.get("build_dependencies", []) == expected
    assert entry["category"] == "Active Learning"
    category = re.search(r"set\(EXTENSION_CATEGORY \"([^\"]+)\"\)", TOP_CMAKE.read_text(encoding="utf-8"))
    assert category is None or category.group(1) == entry["category"]


def test_the_licence_file_is_the_declared_apache_2_licence():
    """The ExtensionsIndex needs a LICENSE file at the root; pyproject.toml and README declare Apache-2.0."""
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    project = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^license = "Apache-2.0"$', project, re.M) and 'license-files = ["LICENSE"]' in project


def readPng(path: Path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    chunks, offset = [], 8
    while offset < len(data):
        length = struct.unpack(">I", data[offset : offset + 4])[0]
        tag = data[offset + 4 : offset + 8]
        chunks.append((tag, data[offset + 8 : offset + 8 + length]))
        assert (
            zlib.crc32(tag + data[offset + 8 : offset + 8 + length]) & 0xFFFFFFFF
            == struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])[0]
        )
        offset += 12 + length
    pixels = zlib.decompress(b"".join(body for tag, body in chunks if tag == b"IDAT"))
    return width, height, pixels


@pytest.mark.parametrize(
    "path",
    [MODULE_DIR / "Resources" / "Icons" / "ASSFTModule.png", REPO / "Resources" / "Icons" / "ASSFT.png"],
    ids=lambda p: p.name,
)
def test_icons_are_real_128_pixel_pngs(path):
    width, height, pixels = readPng(path)
    assert (width, height) == (128, 128)
    assert len(pixels) == height * (1 + 4 * width)
    assert len(set(pixels)) > 20, "an icon of one flat colour"


def test_requirements_file_lists_the_worker_packages():
    lines = [line.split("#")[0].strip() for line in (REPO / "Resources" / "requirements.txt").read_text().splitlines()]
    names = {re.match(r"[A-Za-z0-9._-]+", line).group(0).lower() for line in lines if line}
    assert {"torch", "monai", "nibabel", "scipy", "safetensors", "psutil"} <= names
    # what Slicer ships is never installed by the module (Slicer's own SimpleITK and numpy)
    assert not names & {"numpy", "simpleitk"}
