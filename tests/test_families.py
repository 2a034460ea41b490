"""Model families as registered plug-ins (collab_eval.families): the registry, what derives
from it, the family contract (collab_eval.server_contract), and a family registered from
outside the package (a dist-info on PYTHONPATH) run through lmms-eval's command line."""
import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from collab_eval import families
from collab_eval.families import Family, FamilyError
from collab_eval.server_contract import Server
from tests.helpers import evaluate

ROOT = Path(__file__).resolve().parents[1]


# ----- the registry --------------------------------------------------------------------------
def test_the_built_in_families_are_registered_as_plug_ins():
    installed = families.installed()
    assert installed.broken == {}
    assert list(installed.families)[:3] == ["llava", "qwen2_vl", "instructblip"]
    llava = families.get("llava")
    assert (llava.model_id, llava.tiny_name, llava.trained, llava.pretrained) == (
        "collab_llava", "tiny-llava", "smalldetail-llava", "llava-hf/llava-1.5-7b-hf")
    assert families.get("collab_qwen2_vl").tiny_name == "tiny-qwen2-vl"  # by lmms-eval model too
    assert families.get("instructblip").lmms_eval_model == "instructblip"
    # What each declaration names imports and is what it says.
    from model_adapters.server import ServerModel
    for family in families.all_families():
        assert issubclass(family.server_class(), ServerModel)
        if family.recipe:  # optional (Qwen3-VL has none): when declared, named as the family
            assert family.recipe_class().name.replace("-", "_") == family.name


def test_an_unknown_family_is_refused_listing_the_installed():
    with pytest.raises(FamilyError, match=r"installed families \(llava, qwen2_vl, instructblip.*got 'nope'"):
        families.get("nope")


@pytest.mark.parametrize("fields, message", [
    (dict(name="Llava-Next"), "Family.name must be lower-case"),
    (dict(reference_checkpoints="llava-hf/llava-1.5-7b-hf"), "reference_checkpoints must be a non-empty tuple"),
    (dict(reference_checkpoints=()), "reference_checkpoints must be a non-empty tuple"),
    (dict(server="model_adapters.llava.LlavaServer"), "server must be 'module:attribute'"),
    (dict(lmms_eval_model=""), "lmms_eval_model must name lmms-eval's own adapter"),
    (dict(lmms_eval_compare="roughly"), "lmms_eval_compare must be one of ('answer', 'after_prompt', 'none')"),
])
def test_a_wrong_declaration_names_the_field(fields, message):
    base = dict(name="mine", server="model_adapters.llava:LlavaServer", reference_checkpoints=("a/b",),
                lmms_eval_model="llava_hf")
    with pytest.raises(FamilyError, match=re.escape(message)):
        Family(**{**base, **fields})


def test_lmms_eval_finds_one_model_per_family():
    from model_adapters import manifests
    from model_adapters.lmms_adapter import adapter_class
    found = {m.model_id: m.simple_class_path for m in manifests()}
    assert found == {f.model_id: f"model_adapters.registered.{f.name}" for f in families.all_families()}
    import model_adapters.registered as registered
    for family in families.all_families():
        cls = getattr(registered, family.name)
        assert cls is adapter_class(family)
        assert (cls.model_id, cls.server_class, cls.default_pretrained) == (
            family.model_id, family.server_class(), family.pretrained)


def test_short_checkpoint_names_come_from_the_registry():
    from collab_eval import checkpoints
    assert set(checkpoints.builders()) == {*(f.tiny_name for f in families.all_families() if f.tiny),
                                           "geometry-llava"}
    assert set(checkpoints.packaged()) == {f.trained for f in families.all_families() if f.trained}
    for path in checkpoints.packaged().values():
        assert (path / "config.json").exists(), path


def test_cli_lists_families_and_ci_loops_over_them(capsys):
    from collab_eval.cli import main
    assert main(["families", "--trained"]) == 0
    assert capsys.readouterr().out.split() == [f"{f.model_id}={f.trained}" for f in families.all_families()
                                               if f.trained]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "$(collab-eval families --trained)" in ci and "collab_llava=" not in ci
    assert main(["build-tiny", "tiny-nope"]) == 2
    assert "tiny-llava, tiny-qwen2-vl, tiny-instructblip" in capsys.readouterr().err


def test_the_docs_table_is_the_registry():
    """docs/families.md's table has one row per registered family, each naming its lmms-eval
    model, reference checkpoints, lmms-eval's own adapter, short checkpoint names, default
    layer and family file; and no other row."""
    text = (ROOT / "docs" / "families.md").read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `(collab_\w+)` \|.*$", text, re.M)}
    assert set(rows) == {f.model_id for f in families.all_families()}
    for family in families.all_families():
        row = rows[family.model_id]
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert set(re.findall(r"`([^`]+)`", cells[1])) == set(family.reference_checkpoints), row
        assert cells[2] == f"`{family.lmms_eval_model}`", row
        assert set(re.findall(r"`([^`]+)`", cells[3])) == {n for n in (family.tiny_name, family.trained) if n}, row
        layer, depth = family.default_layer()
        assert f"{layer} of {depth}" in cells[4], row
        assert cells[5] == f"`{family.server.partition(':')[0].replace('.', '/')}.py`", row


# ----- the contract --------------------------------------------------------------------------
CALLERS = ["collab_eval/pipeline.py", "collab_eval/locators.py", "collab_eval/builtin_locators.py",
           "model_adapters/lmms_adapter.py"]


def server_calls(path: Path) -> set[str]:
    """Every ``<x>.server.NAME`` and ``server.NAME`` the module reads."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id == "server") or (
                    isinstance(owner, ast.Attribute) and owner.attr == "server"):
                names.add(node.attr)
    return names


def test_the_contract_is_every_method_the_method_calls_on_a_server():
    members = {n for n in dir(Server) if not n.startswith("_")} | set(Server.__annotations__)
    used = set().union(*(server_calls(ROOT / p) for p in CALLERS))
    assert used, "the AST walk found no server call: the check would be vacuous"
    assert used <= members, f"called on a server but not in server_contract.Server: {sorted(used - members)}"
    assert {"gradient_attention", "pixel_gradient", "without_image_placeholders", "frame"} <= used
    for family in families.all_families():
        server = family.server_class()
        for name in members:
            if name in Server.__annotations__:
                continue  # attributes (name, input_side) are set in __init__
            assert callable(getattr(server, name, None)), (family.name, name)
            want = list(inspect.signature(getattr(Server, name)).parameters)
            assert list(inspect.signature(getattr(server, name)).parameters)[:len(want)] == want, (family.name, name)


# ----- a family from outside the package -----------------------------------------------------
PLUGIN = '''
from collab_eval.families import Family
from model_adapters.llava import LlavaServer


class DeepLlavaServer(LlavaServer):
    """LLaVA-1.5 whose map is read two thirds of the way up by default (the built-in: 14/32)."""
    vicrop_layer = (2, 3)


FAMILY = Family(name="deep_llava", server="my_family:DeepLlavaServer",
                reference_checkpoints=("llava-hf/llava-1.5-7b-hf",), lmms_eval_model="llava_hf",
                tiny="collab_eval.lab.tiny_checkpoints:build_tiny_llava")
BROKEN = Family(name="other", server="my_family:Nowhere", reference_checkpoints=("x/y",), lmms_eval_model="x")
'''


def family_distribution(site: Path) -> Path:
    site.mkdir()
    (site / "my_family.py").write_text(PLUGIN)
    info = site / "my_family-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-family\nVersion: 0.1\n")
    # Two entry points: the family, and one whose name disagrees with its declaration (reported, not fatal).
    (info / "entry_points.txt").write_text("[collab_eval.families]\ndeep_llava = my_family:FAMILY\n"
                                           "mislabelled = my_family:BROKEN\n")
    return site


@pytest.fixture
def plugin_on_path(tmp_path, monkeypatch):
    """The plug-in distribution importable in this process (the registry read afresh, and again after)."""
    monkeypatch.syspath_prepend(str(family_distribution(tmp_path / "site")))
    families.installed.cache_clear()
    yield
    monkeypatch.undo()
    families.installed.cache_clear()
    sys.modules.pop("my_family", None)


def test_a_family_plug_in_is_listed_and_a_broken_one_named(plugin_on_path, capsys):
    from collab_eval import checkpoints
    from collab_eval.cli import main
    assert main(["families", "--tiny"]) == 0
    listed = capsys.readouterr()
    assert "collab_deep_llava=tiny-deep-llava" in listed.out.split()
    assert "family mislabelled cannot be loaded" in listed.err and "declares name 'other'" in listed.err
    assert families.get("deep_llava").default_layer() == (2, 3)
    assert "tiny-deep-llava" in checkpoints.builders()
    from model_adapters import manifests
    assert "collab_deep_llava" in {m.model_id for m in manifests()}


LAYERS = """
from collab_eval import families
from collab_eval.checkpoints import resolve
path = resolve("tiny-deep-llava")
print(families.get("deep_llava").server_class()(path).layer, families.get("llava").server_class()(path).layer)
"""


@pytest.mark.slow
def test_a_family_plug_in_runs_through_lmms_eval(tmp_path, monkeypatch):
    """The plug-in's model (``collab_deep_llava``) on its own tiny checkpoint (``tiny-deep-llava``,
    a name the registry gives it), through lmms-eval's command line: its records are the new
    adapter's, and its default layer is its own (2 of the tiny LLaVA's 3 layers, where the
    built-in LLaVA's is 1)."""
    monkeypatch.setenv("PYTHONPATH", str(family_distribution(tmp_path / "site")))
    run = evaluate("collab_deep_llava", f"pretrained=tiny-deep-llava,policy=always,max_new_tokens=3,"
                   f"records_dir={tmp_path / 'out' / 'records'}", "collab_pope_mini", tmp_path / "out",
                   extra=("--limit", "2"))
    assert len(run.records) == 2
    for r in run.records:
        assert r["error"] is None and r["run_id"].startswith("collab_deep_llava-") and r["retransmitted"]
    layers = subprocess.run([sys.executable, "-c", LAYERS], capture_output=True, text=True, check=True)
    assert layers.stdout.split() == ["2", "1"], layers.stdout
